from tortoise.migrations.migration import Migration as BaseMigration

from reality_tortoise import CreateRealityTables


class Migration(BaseMigration):
    initial = True
    operations = [CreateRealityTables()]
