/*
 * chat-cluster page script (plain JavaScript, no build step, no dependency).
 *
 * Owns everything the page does after it loads:
 *   - the channel picker: the list from GET /channels (refreshed every few seconds) and the free
 *     entry, validated like the server (^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$); the open channel
 *     lives in the URL fragment (#name), so a reload or a shared link opens the same channel;
 *   - the message list: history over HTTP (the most recent page first, older pages when the
 *     user scrolls up), then live messages over the WebSocket /ws?channel=C&after=P. Messages
 *     are kept by position, so each one shows exactly once and in position order, whatever
 *     mix of history, replay, live push and POST answers delivers it;
 *   - reconnecting: when the socket closes (node restart, 1012 reload, 4008 slow consumer,
 *     network), it reconnects with exponential backoff and jitter, with after=<highest position
 *     held>, so the server replays exactly what was missed;
 *   - sending: POST /channels/C/messages with a client-generated id. A retry (automatic after a
 *     network error, or the user pressing Enter again after a 503 or 504) reuses the id and the
 *     author, so the server stores the message at most once (ids are per author). Errors are
 *     shown with their cause: 413 too long, 503 broker unavailable (not stored), 504 outcome
 *     unknown (retry to settle it), 400 invalid input;
 *   - the header: the node id and phase from GET /status, and the connection state;
 *   - the author name, remembered in localStorage;
 *   - the access token (servers with --auth token), kept in sessionStorage (this tab only): sent
 *     as `Authorization: Bearer` on HTTP and, since a browser WebSocket cannot set headers, as
 *     the subprotocol `bearer.<token>` next to `chat-cluster` (never in the URL, which servers
 *     and proxies log). A 401 or a 4001 close (token expired) asks for a new token; with a
 *     token the server takes the author from it and ignores the name field.
 *
 * Hooks for tests and scripts: #conn[data-state] is connecting|live|reconnecting|offline;
 * every message is an li.msg with data-position and data-id.
 */
(() => {
  'use strict';

  const CHANNEL_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
  // Opened when the address names no channel and no channel has a message yet.
  const DEFAULT_CHANNEL = 'general';
  const AUTHOR_KEY = 'chat-cluster.author';
  const TOKEN_KEY = 'chat-cluster.token';
  /** Messages the first screen aims to show, and each "older" load adds. */
  const PAGE = 200;
  /** Page size of the HTTP reads (the server allows up to 10000). */
  const FETCH_LIMIT = 1000;
  /** Reconnect backoff: first delay, ceiling (ms). */
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 8000;
  const POLL_MS = 5000;
  /** Automatic retries of a send that could not reach the node. */
  const SEND_RETRIES = 4;

  const $ = (id) => document.getElementById(id);
  const el = {
    nodeId: $('node-id'), nodePhase: $('node-phase'), conn: $('conn'),
    channelList: $('channel-list'), channelForm: $('channel-form'),
    channelInput: $('channel-input'), channelError: $('channel-error'),
    channelName: $('channel-name'),
    history: $('history'), historyTop: $('history-top'), historyEmpty: $('history-empty'),
    messages: $('messages'), banner: $('banner'),
    composer: $('composer'), author: $('author'), text: $('text'), send: $('send'),
    sendError: $('send-error'),
    tokenForm: $('token-form'), token: $('token'),
  };

  /** The access token the user pasted ('' when none). */
  let token = '';

  /** Request headers, with the token when there is one. */
  function authHeaders(extra) {
    const h = Object.assign({ Accept: 'application/json' }, extra || {});
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }

  // --- state of the open channel -------------------------------------------------------------
  // History is held as one contiguous range of the channel: every message with
  // floor < position <= cursor is in `byPosition` (positions are global, so a channel's own
  // positions have gaps; the range is in global positions). Older pages lower `floor`; the
  // socket raises `cursor`.
  let channel = DEFAULT_CHANNEL;
  let generation = 0;         // bumped on every channel switch; stale async work checks it
  let byPosition = new Map(); // position -> li
  let positions = [];         // ascending positions shown
  let waiting = false;        // the 'waiting' banner is up (the replay is held)
  let floor = 0;              // everything above floor is held (0: the whole history)
  let cursor = 0;             // highest position up to which the history is complete
  let olderSpan = 0;          // width (in global positions) of the next "older" request
  let loadingOlder = null;   // the "older" read in flight (a promise), if any
  let ws = null;
  let reconnectTimer = null;
  let attempts = 0;
  let pending = null;         // {id, text, channel, author} of the send not yet confirmed
  let channels = [];          // last GET /channels answer

  // --- small helpers -------------------------------------------------------------------------
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** A v4 UUID; crypto.randomUUID needs a secure context, getRandomValues does not. */
  function newId() {
    if (window.crypto && typeof crypto.randomUUID === 'function') {
      try { return crypto.randomUUID(); } catch (_) { /* insecure context: fall through */ }
    }
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function channelProblem(name) {
    if (name === '') return 'Enter a channel name.';
    if (name.length > 128) return `Invalid channel name: ${name.length} characters, at most 128.`;
    if (!/^[A-Za-z0-9]/.test(name)) return 'Invalid channel name: it must start with a letter or a digit.';
    if (!CHANNEL_RE.test(name)) {
      const bad = [...name].find((c) => !/[A-Za-z0-9._-]/.test(c));
      return `Invalid channel name: "${bad}" is not allowed; use letters, digits, ".", "_" or "-".`;
    }
    return null;
  }

  async function getJson(path) {
    const res = await fetch(path, { cache: 'no-store', headers: authHeaders() });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error(body.error || `HTTP ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  function showBanner(text) {
    el.banner.textContent = text || '';
    el.banner.hidden = !text;
  }

  function setConn(state, text) {
    el.conn.dataset.state = state;
    el.conn.textContent = text;
  }

  // --- node status and channel list ----------------------------------------------------------
  async function pollStatus() {
    try {
      const s = await getJson('/status');
      el.nodeId.textContent = s.node_id;
      el.nodePhase.textContent = s.phase === 'live' ? '' : `(${s.phase.replace('_', ' ')}, lag ${s.lag})`;
      // The node answers again: do not sit out the rest of a long backoff.
      if (!ws && reconnectTimer && attempts > 2) reconnectNow();
    } catch (_) {
      el.nodePhase.textContent = '(unreachable)';
    }
  }

  async function pollChannels() {
    try {
      channels = (await getJson('/channels')).channels || [];
    } catch (_) {
      return;
    }
    renderChannels();
  }

  function renderChannels() {
    const list = channels.slice().sort((a, b) => a.name.localeCompare(b.name));
    if (!list.some((c) => c.name === channel)) list.unshift({ name: channel, messages: 0 });
    const frag = document.createDocumentFragment();
    for (const c of list) {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.dataset.channel = c.name;
      b.title = c.name;
      if (c.name === channel) b.setAttribute('aria-current', 'true');
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = `# ${c.name}`;
      const count = document.createElement('span');
      count.className = 'count';
      count.textContent = String(c.messages);
      count.setAttribute('aria-label', `${c.messages} messages`);
      b.append(name, count);
      li.append(b);
      frag.append(li);
    }
    el.channelList.replaceChildren(frag);
  }

  // --- the message list ----------------------------------------------------------------------
  function nearBottom() {
    const h = el.history;
    return h.scrollHeight - h.scrollTop - h.clientHeight < 80;
  }

  function scrollToBottom() {
    el.history.scrollTop = el.history.scrollHeight;
  }

  function renderMessage(m) {
    const li = document.createElement('li');
    li.className = 'msg';
    li.dataset.position = String(m.position);
    li.dataset.id = m.id;
    const me = el.author.value.trim();
    if (me && m.author === me) li.classList.add('mine');
    const meta = document.createElement('div');
    meta.className = 'meta';
    const author = document.createElement('span');
    author.className = 'author';
    author.textContent = m.author;
    const time = document.createElement('time');
    time.className = 'time';
    time.dateTime = m.sent_at;
    const d = new Date(m.sent_at);
    time.textContent = isNaN(d) ? m.sent_at : d.toLocaleTimeString();
    time.title = m.sent_at;
    const pos = document.createElement('span');
    pos.className = 'pos';
    pos.textContent = `#${m.position}`;
    pos.title = 'position in the cluster-wide order';
    meta.append(author, time, pos);
    const body = document.createElement('p');
    body.className = 'body';
    body.textContent = m.text;
    li.append(meta, body);
    return li;
  }

  /** First index in `positions` whose value is >= p. */
  function lowerBound(p) {
    let lo = 0, hi = positions.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (positions[mid] < p) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  /** Adds messages of the open channel, skipping positions already shown. Returns the count. */
  function addMessages(list) {
    let added = 0;
    for (const m of list) {
      if (m.channel !== undefined && m.channel !== channel) continue;
      if (byPosition.has(m.position)) continue;
      const li = renderMessage(m);
      const i = lowerBound(m.position);
      el.messages.insertBefore(li, i < positions.length ? byPosition.get(positions[i]) : null);
      positions.splice(i, 0, m.position);
      byPosition.set(m.position, li);
      added++;
    }
    el.historyEmpty.hidden = positions.length > 0 || floor > 0;
    return added;
  }

  /** Adds live or just-sent messages, following them when the view is at the bottom. */
  function addNew(list) {
    const follow = nearBottom();
    const added = addMessages(list);
    if (!added) return;
    if (follow) scrollToBottom();
    // Keep the sidebar count current between two polls of GET /channels.
    const top = positions[positions.length - 1];
    const info = channels.find((c) => c.name === channel);
    if (info && top > info.last_position) {
      info.messages += added;
      info.last_position = top;
    } else if (!info) {
      channels.push({ name: channel, messages: added, last_position: top });
    }
    renderChannels();
  }

  /** Removes the messages at positions from..to (inclusive) that the cluster no longer has. */
  function dropLost(from, to) {
    positions = positions.filter((p) => {
      if (p < from || p > to) return true;
      const li = byPosition.get(p);
      if (li) li.remove();
      byPosition.delete(p);
      return false;
    });
  }

  function updateHistoryTop() {
    el.historyTop.textContent = floor === 0
      ? (positions.length ? `Beginning of #${channel}` : '')
      : (loadingOlder ? 'Loading older messages…' : 'Scroll up for older messages');
  }

  /**
   * Reads the channel's messages in (after, upto], `limit` per request (a request may return
   * messages above `upto`, which are dropped: the API has no upper bound).
   */
  async function readRange(after, upto, limit, gen) {
    const out = [];
    let from = after;
    for (;;) {
      const page = await getJson(`/channels/${encodeURIComponent(channel)}/messages?after=${from}&limit=${limit}`);
      if (gen !== generation) throw new Error('stale');
      for (const m of page.messages) if (m.position <= upto) out.push(m);
      const last = page.next;
      if (last === null || last >= upto || page.messages.length < limit) return out;
      from = last;
    }
  }

  /*
   * The recent page first. The API only reads forward (after=P), and positions are global, so
   * "the last PAGE messages of this channel" has no direct query. GET /channels gives the
   * channel's message count and its last position; count/last_position is its average share of
   * the global order, so the latest PAGE messages are expected within the last
   * span = PAGE * last_position / count positions. We read forward from last_position - span:
   *   - if that window is denser than expected (a full FETCH_LIMIT page comes back before the
   *     end), we measure the density of what came back and jump ahead to where the last PAGE
   *     messages should start, so a burst never makes us read the whole burst;
   *   - if it is sparser (fewer than PAGE messages), loadOlder() widens the window backwards
   *     (doubling) until the view is filled or the start of the channel is reached.
   * The socket then continues from the highest position read, and scrolling up reads older
   * windows below `floor` the same way.
   */
  async function loadRecent(gen) {
    const info = channels.find((c) => c.name === channel);
    const count = info ? info.messages : 0;
    const last = info ? info.last_position : 0;
    let from = count <= PAGE ? 0 : Math.max(0, last - Math.ceil((PAGE * last) / count));
    let start = from; // `held` is every message of the channel above `start`
    olderSpan = Math.max(PAGE, last - from);
    let held = [];
    for (let hops = 0; ; hops++) {
      const page = await getJson(`/channels/${encodeURIComponent(channel)}/messages?after=${from}&limit=${FETCH_LIMIT}`);
      if (gen !== generation) return;
      held = held.concat(page.messages);
      if (page.next === null || page.messages.length < FETCH_LIMIT || hops > 50) {
        cursor = Math.max(from, page.next || 0);
        break;
      }
      // Denser than expected: skip ahead to where the last PAGE messages should begin.
      const density = page.messages.length / (page.next - from);
      const target = Math.max(last, channelLast()) - Math.ceil((2 * PAGE) / density);
      if (target > page.next) {
        held = [];
        start = target;
        from = target;
        olderSpan = Math.max(PAGE, Math.ceil((2 * PAGE) / density));
      } else {
        from = page.next;
      }
    }
    // Keep a few pages on screen at first; the rest stays reachable by scrolling up.
    if (held.length > 3 * PAGE) {
      held = held.slice(held.length - PAGE);
      start = held[0].position - 1;
    }
    floor = start;
    addMessages(held);
    scrollToBottom();
    updateHistoryTop();
  }

  function channelLast() {
    const info = channels.find((c) => c.name === channel);
    return info ? info.last_position : 0;
  }

  /** Reads the window just below `floor` and prepends it; callers share the read in flight. */
  function loadOlder() {
    if (!loadingOlder && floor > 0) {
      const gen = generation;
      const p = readOlder(gen).finally(() => {
        if (gen === generation && loadingOlder === p) {
          loadingOlder = null;
          updateHistoryTop();
          // Still at the top (an empty window adds nothing and fires no new scroll event):
          // go on, the window doubles each time it comes back empty.
          if (floor > 0 && el.history.scrollTop < 300) loadOlder();
        }
      });
      loadingOlder = p;
      updateHistoryTop();
    }
    return loadingOlder || Promise.resolve();
  }

  async function readOlder(gen) {
    try {
      const from = Math.max(0, floor - olderSpan);
      // The window is sized to hold about PAGE messages: ask for 2 * PAGE per request, so
      // little is read past `floor` and thrown away.
      let messages = await readRange(from, floor, 2 * PAGE, gen);
      const got = messages.length;
      let newFloor = from;
      if (got > 3 * PAGE) {
        messages = messages.slice(messages.length - PAGE);
        newFloor = messages[0].position - 1;
      }
      // Adapt the next window to what this one held.
      if (got < PAGE / 2) olderSpan *= 2;
      else if (got > 2 * PAGE) olderSpan = Math.max(PAGE, Math.floor(olderSpan / 2));
      const h = el.history;
      const fromBottom = h.scrollHeight - h.scrollTop;
      floor = newFloor;
      addMessages(messages);
      h.scrollTop = h.scrollHeight - fromBottom;
      showBanner('');
    } catch (e) {
      if (gen !== generation) return;
      showBanner(`Could not load older messages: ${e.message}`);
      await sleep(2000);
    }
  }

  /** Loads older windows while the list does not fill the view (no scroll bar, no scroll event). */
  async function fillView(gen) {
    for (let i = 0; i < 40 && gen === generation && floor > 0; i++) {
      const h = el.history;
      if (h.scrollHeight > h.clientHeight + 200 && positions.length >= PAGE / 2) return;
      await loadOlder();
      if (gen === generation && nearBottom()) scrollToBottom();
    }
  }

  // --- the live socket -----------------------------------------------------------------------
  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    const gen = generation;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${scheme}//${location.host}/ws?channel=${encodeURIComponent(channel)}&after=${cursor}`;
    setConn(attempts ? 'reconnecting' : 'connecting', attempts ? 'reconnecting…' : 'connecting…');
    const sock = token ? new WebSocket(url, ['chat-cluster', `bearer.${token}`]) : new WebSocket(url);
    ws = sock;
    sock.onopen = () => {
      if (gen !== generation) return;
      attempts = 0;
      setConn('live', 'live');
      showBanner('');
      pollStatus();
    };
    sock.onmessage = (ev) => {
      if (gen !== generation) return;
      let f;
      try { f = JSON.parse(ev.data); } catch (_) { return; }
      if (f.type === 'message' && f.channel === channel) {
        addNew([f]);
        if (f.position > cursor) cursor = f.position;
        if (waiting) { waiting = false; showBanner(''); }
      } else if (f.type === 'waiting') {
        // The node's memory no longer holds what follows and the history log is behind: the
        // replay goes on (or the server closes with 1013) once the log has it.
        waiting = true;
        showBanner('Older messages are still being copied to the history; waiting…');
      } else if (f.type === 'lost') {
        dropLost(f.from, f.to);
        showBanner(`Messages after position ${f.from - 1} up to ${f.to} were lost when the message broker lost its data.`);
      }
    };
    sock.onclose = (ev) => {
      if (gen !== generation || ws !== sock) return;
      ws = null;
      let delay = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempts);
      delay = Math.round(delay / 2 + Math.random() * (delay / 2));
      let why = 'connection lost';
      if (ev.code === 4008) { why = 'fell behind'; delay = 100; }
      else if (ev.code === 4001) { why = 'token expired; paste a new token'; delay = BACKOFF_MAX; }
      else if (ev.code === 1012) why = 'node reloading its history';
      else if (ev.code === 1013) why = 'history not available yet';
      else if (ev.code === 1011) why = ev.reason || 'server error';
      attempts++;
      setConn(attempts > 3 ? 'offline' : 'reconnecting',
        `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
      reconnectTimer = setTimeout(connect, delay);
    };
  }

  function reconnectNow() {
    if (ws) return;
    connect();
  }

  function disconnect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (ws) {
      const old = ws;
      ws = null;
      old.onclose = null;
      old.close(1000, 'switching channel');
    }
  }

  // --- opening a channel ---------------------------------------------------------------------
  async function openChannel(name) {
    disconnect();
    generation++;
    const gen = generation;
    channel = name;
    byPosition = new Map();
    positions = [];
    floor = 0;
    cursor = 0;
    loadingOlder = null;
    attempts = 0;
    el.messages.replaceChildren();
    el.historyEmpty.hidden = true;
    el.channelName.textContent = name;
    document.title = `#${name} · chat-cluster`;
    showBanner('');
    el.historyTop.textContent = 'Loading…';
    renderChannels();
    for (let tries = 0; gen === generation; tries++) {
      try {
        // Fresh counts for the recent-page estimate (without them it would read from 0).
        channels = (await getJson('/channels')).channels || [];
        if (gen !== generation) return;
        renderChannels();
        await loadRecent(gen);
        break;
      } catch (e) {
        if (gen !== generation) return;
        showBanner(e.status === 401 || e.status === 403
          ? explain(e.status, e.message)
          : `Could not load the history of #${name}: ${e.message}. Retrying…`);
        setConn('reconnecting', 'history unavailable; retrying');
        await sleep(Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** tries));
      }
    }
    if (gen !== generation) return;
    showBanner('');
    el.historyEmpty.hidden = positions.length > 0 || floor > 0;
    connect();
    fillView(gen);
  }

  function channelFromHash() {
    const raw = decodeURIComponent(location.hash.replace(/^#/, ''));
    if (!raw) return DEFAULT_CHANNEL;
    const problem = channelProblem(raw);
    if (problem) {
      showChannelError(`${problem} (from the address: opening #${DEFAULT_CHANNEL} instead)`);
      return DEFAULT_CHANNEL;
    }
    return raw;
  }

  // The channel to open first: the one the address names, else the one with the most recent
  // message (highest last_position in GET /channels), else DEFAULT_CHANNEL.
  async function initialChannel() {
    if (location.hash.replace(/^#/, '')) return channelFromHash();
    try {
      const list = (await getJson('/channels')).channels || [];
      let latest = null;
      for (const c of list) {
        if ((c.last_position || 0) > ((latest && latest.last_position) || 0)) latest = c;
      }
      if (latest) return latest.name;
    } catch (_) {
      // The node does not answer yet: open the default; openChannel retries its history.
    }
    return DEFAULT_CHANNEL;
  }

  function showChannelError(text) {
    el.channelError.textContent = text || '';
    el.channelError.hidden = !text;
    if (text) el.channelInput.setAttribute('aria-invalid', 'true');
    else el.channelInput.removeAttribute('aria-invalid');
  }

  function goToChannel(name) {
    showChannelError('');
    if (name === channel && location.hash === `#${encodeURIComponent(name)}`) return;
    location.hash = encodeURIComponent(name); // hashchange opens it
  }

  // --- sending -------------------------------------------------------------------------------
  function showSendError(text) {
    el.sendError.textContent = text || '';
    el.sendError.hidden = !text;
    if (text) el.text.setAttribute('aria-invalid', 'true');
    else el.text.removeAttribute('aria-invalid');
  }

  function explain(status, reason) {
    switch (status) {
      case 413:
        return `Message too long: ${reason}. Shorten it and send again.`;
      case 503:
        return `Broker unavailable, the message was not stored: ${reason}. Press Enter to retry.`;
      case 504:
        return `Broker unavailable, the message may or may not be stored: ${reason}. Press Enter to retry (it will not be stored twice).`;
      case 400:
        return `Message rejected: ${reason}.`;
      case 401:
        return `Not signed in: ${reason}. Paste an access token above.`;
      case 403:
        return `Not allowed: ${reason}.`;
      default:
        return `Send failed (HTTP ${status}): ${reason}.`;
    }
  }

  async function send() {
    const text = el.text.value;
    if (text.trim() === '') {
      showSendError('Type a message first.');
      return;
    }
    const target = channel;
    // The same text again on the same channel after a failure is a retry: same id, stored once.
    const author = el.author.value.trim();
    if (!pending || pending.text !== text || pending.channel !== target || pending.author !== author) {
      pending = { id: newId(), text, channel: target, author };
    }
    const { id } = pending;
    const body = JSON.stringify(author ? { id, text, author } : { id, text });
    el.send.disabled = true;
    showSendError('');
    try {
      for (let attempt = 0; ; attempt++) {
        let res;
        try {
          res = await fetch(`/channels/${encodeURIComponent(target)}/messages`, {
            method: 'POST',
            headers: authHeaders({ 'Content-Type': 'application/json' }),
            body,
          });
        } catch (_) {
          if (attempt < SEND_RETRIES) {
            showSendError(`Cannot reach the node; retrying (${attempt + 1}/${SEND_RETRIES})…`);
            await sleep(BACKOFF_MIN * 2 ** attempt);
            continue;
          }
          showSendError('Cannot reach the node; the message was not confirmed. Press Enter to retry (it will not be stored twice).');
          return;
        }
        const answer = await res.json().catch(() => ({}));
        if (res.ok) {
          if (pending && pending.id === id) pending = null;
          if (el.text.value === text) el.text.value = '';
          showSendError('');
          if (target === channel && answer.position) {
            addNew([answer]);
            scrollToBottom();
          }
          return;
        }
        showSendError(explain(res.status, answer.error || res.statusText || 'no reason given'));
        // A 4xx will not get better by retrying; after a 503 or 504 the same id settles it.
        if (res.status !== 503 && res.status !== 504) pending = null;
        return;
      }
    } finally {
      el.send.disabled = false;
    }
  }

  // --- wiring --------------------------------------------------------------------------------
  function init() {
    try { el.author.value = localStorage.getItem(AUTHOR_KEY) || ''; } catch (_) { /* storage off */ }
    el.author.addEventListener('input', () => {
      try { localStorage.setItem(AUTHOR_KEY, el.author.value.trim()); } catch (_) { /* storage off */ }
    });

    try { token = sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { /* storage off */ }
    el.token.value = token;
    el.tokenForm.addEventListener('submit', (e) => {
      e.preventDefault();
      token = el.token.value.trim();
      try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* storage off */ }
      showBanner('');
      pollChannels();
      openChannel(channel || DEFAULT_CHANNEL);
    });

    el.composer.addEventListener('submit', (e) => {
      e.preventDefault();
      send();
    });
    el.text.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        if (!el.send.disabled) send();
      }
    });
    el.text.addEventListener('input', () => {
      if (!el.sendError.hidden && !pending) showSendError('');
    });

    el.channelForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const name = el.channelInput.value.trim();
      const problem = channelProblem(name);
      if (problem) {
        showChannelError(problem);
        el.channelInput.focus();
        return;
      }
      el.channelInput.value = '';
      goToChannel(name);
    });
    el.channelInput.addEventListener('input', () => {
      const name = el.channelInput.value.trim();
      const problem = name === '' ? null : channelProblem(name);
      showChannelError(problem);
    });
    el.channelList.addEventListener('click', (e) => {
      const b = e.target.closest('button[data-channel]');
      if (b) goToChannel(b.dataset.channel);
    });

    el.history.addEventListener('scroll', () => {
      if (el.history.scrollTop < 300) loadOlder();
    }, { passive: true });

    window.addEventListener('hashchange', () => {
      const name = channelFromHash();
      if (name !== channel || positions.length === 0) openChannel(name);
    });
    window.addEventListener('online', reconnectNow);

    pollStatus();
    setInterval(pollStatus, POLL_MS);
    setInterval(pollChannels, POLL_MS);
    initialChannel().then(openChannel);
  }

  init();
})();
