"""A Tortoise migrations package for the tests: Reality's tables as a user adds them."""
