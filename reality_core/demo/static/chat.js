// The demo chat page. All freshness comes from reality-client.js: this file only says which
// keys the page shows, how to read each one, and how to draw it. It never patches its own
// state after a post; it asks for a sync, and the sync says what to read again.

import { RealityClient } from "./reality-client.js";

const ROOMS_KEY = document.body.dataset.roomsKey;
const ROOM_KEY_PREFIX = document.body.dataset.roomKeyPrefix;
const AUTHOR_STORAGE = "reality-demo-author";

const $ = (id) => document.getElementById(id);
const roomsList = $("rooms");
const messagesList = $("messages");
const logList = $("log");
const authorInput = $("author");
const bodyInput = $("body");

const reality = new RealityClient({
  baseUrl: document.body.dataset.syncBase,
  onSync: logSync,
  onError: (error) => showError(error.message),
});

let rooms = [];
let current = decodeURIComponent(location.hash.slice(1)) || "general";
let unsubscribeRoom = null;

class ApiError extends Error {}

async function api(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { accept: "application/json", ...(options.headers ?? {}) },
    cache: "no-store",
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(data.detail ?? `HTTP ${res.status}`);
  return data;
}

function messagesPath(roomId) {
  return `/api/rooms/${encodeURIComponent(roomId)}/messages`;
}

// --- what the page shows: two kinds of keys ---------------------------------------------

// The room list hangs on the rooms table's key.
reality.subscribe(ROOMS_KEY, () => api("/api/rooms"), (data) => {
  rooms = data.rooms;
  if (!rooms.some((room) => room.id === current) && rooms.length > 0) {
    selectRoom(rooms[0].id);
  } else {
    renderRooms();
    renderRoomTitle();
  }
});

// The open room's messages hang on room:<id>.
function selectRoom(roomId) {
  current = roomId;
  history.replaceState(null, "", `#${encodeURIComponent(roomId)}`);
  if (unsubscribeRoom) unsubscribeRoom();
  messagesList.replaceChildren();
  renderRooms();
  renderRoomTitle();
  const key = ROOM_KEY_PREFIX + roomId;
  unsubscribeRoom = reality.subscribe(key, () => api(messagesPath(roomId)),
    (data, version) => renderMessages(data, version));
}

// --- drawing ------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children); // text is inserted as text, never parsed as HTML
  return node;
}

function renderRooms() {
  roomsList.replaceChildren(...rooms.map((room) => {
    const button = el("button", { type: "button", className: "room" }, room.title);
    button.addEventListener("click", () => selectRoom(room.id));
    if (room.id === current) button.setAttribute("aria-current", "true");
    return el("li", {}, button);
  }));
}

function renderRoomTitle() {
  const room = rooms.find((r) => r.id === current);
  $("room-title").textContent = room ? room.title : current;
}

function renderMessages(data, version) {
  $("room-key").textContent = `key ${data.key} · version ${version}`;
  const atBottom = messagesList.scrollTop + messagesList.clientHeight
    >= messagesList.scrollHeight - 8;
  messagesList.replaceChildren(...data.messages.map((m) => el("li", {},
    el("span", { className: "meta" },
      el("strong", {}, m.author), " ",
      el("time", { dateTime: m.createdAt }, new Date(m.createdAt).toLocaleTimeString())),
    el("p", {}, m.body))));
  if (data.messages.length === 0) {
    messagesList.append(el("li", { className: "muted" }, "No messages yet. Say hello!"));
  }
  if (atBottom) messagesList.scrollTop = messagesList.scrollHeight;
}

function logSync({ hint, known, changed, loaded }) {
  const time = new Date().toLocaleTimeString();
  const sent = Object.keys(known).length;
  const what = changed.length
    ? `changed: ${changed.map((key) => `${key} → v${reality.version(key) ?? "?"}`).join(", ")}`
    : "nothing changed";
  const extra = loaded.length > changed.length ? ` · first read of ${loaded.length - changed.length}` : "";
  logList.prepend(el("li", { className: changed.length ? "changed" : "" },
    el("time", {}, time), ` ${hint} · asked about ${sent} key${sent === 1 ? "" : "s"} · ${what}${extra}`));
  while (logList.children.length > 12) logList.lastElementChild.remove();
  hideError();
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

// --- writing ------------------------------------------------------------------------------

authorInput.value = localStorage.getItem(AUTHOR_STORAGE)
  ?? `guest-${Math.floor(1000 + Math.random() * 9000)}`;

$("post").addEventListener("submit", async (event) => {
  event.preventDefault();
  localStorage.setItem(AUTHOR_STORAGE, authorInput.value);
  try {
    await api(messagesPath(current), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ author: authorInput.value, body: bodyInput.value }),
    });
  } catch (error) {
    showError(error.message);
    return;
  }
  bodyInput.value = "";
  messagesList.scrollTop = messagesList.scrollHeight;
  await reality.afterMutation();
});

$("new-room").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("new-room-title");
  let created;
  try {
    created = await api("/api/rooms", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ title: input.value }),
    });
  } catch (error) {
    showError(error.message);
    return;
  }
  input.value = "";
  selectRoom(created.room.id);
  await reality.afterMutation();
});

selectRoom(current);
reality.start();
