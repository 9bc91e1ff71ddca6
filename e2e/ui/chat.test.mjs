// e2e/ui/chat.test.mjs: the chat page of chat-server in a real browser.
//
// Starts the data plane as loopback processes (`e2e/processes up --nodes 2`: Redis, replication
// log replicas, two chat-servers), drives Debian's Chromium in headless mode with playwright-core
// (no browser download) and checks, through the page only:
//   - a page on each node, messages sent from both show on both, once each, in the same order;
//   - a reload brings the history back (and the author name, from localStorage);
//   - a node killed and started again with the same command line: its page reconnects and shows
//     what was sent through the other node meanwhile, exactly once, in order;
//   - a message over the size limit shows the 413 error; an invalid channel name is refused;
//   - a long history opens on its most recent page and older pages load on scroll up;
//   - with Redis stopped a send shows 503 broker unavailable; once Redis is back, Enter again
//     stores the message exactly once (the retry reuses the message id);
// and saves screenshots under target/ui/ (conversation.png, error.png).
// Last, the data plane is restarted with `--auth token`: the page refuses to go live without a
// token, takes a pasted one and posts as its user.
// `e2e/processes down` runs at the end, also on failure. Run it with e2e/ui/run.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const processes = path.join(root, 'e2e/processes');
const stateDir = path.join(root, 'target/processes');
const artifacts = path.join(root, 'target/ui');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const WAIT = 30_000;
const tag = Date.now().toString(36);
const channel = `ui-e2e-${tag}`;

let nodes = []; // [{name, url}]
let redisPort = 0;
let context = null;
let profileDir = null;
let pageA = null; // on node-0
let pageB = null; // on node-1
const pageErrors = [];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function log(...args) {
  console.log('#', ...args);
}

function processesDown() {
  const r = spawnSync(processes, ['down'], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) log(`e2e/processes down failed: ${r.stderr}`);
}

async function waitHttp(url, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(url);
      if (res.ok) return;
    } catch (_) { /* not up yet */ }
    if (Date.now() > deadline) throw new Error(`${url} not ready after ${timeoutMs} ms`);
    await sleep(200);
  }
}

async function post(nodeUrl, ch, text, author = 'script') {
  const res = await fetch(`${nodeUrl}/channels/${ch}/messages`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ text, author }),
  });
  const body = await res.text();
  assert.equal(res.status, 201, `POST ${ch}: ${res.status} ${body}`);
  return JSON.parse(body);
}

async function openPage(nodeUrl, ch) {
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${nodeUrl}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Uncaught/.test(m.text())) {
      pageErrors.push(`${nodeUrl}: ${m.text()}`);
    }
  });
  await page.goto(`${nodeUrl}/#${ch}`);
  await waitLive(page);
  return page;
}

async function waitLive(page) {
  await page.waitForSelector('#conn[data-state="live"]', { timeout: WAIT });
}

/** The messages a page shows, in page order. */
function shown(page) {
  return page.$$eval('#messages li.msg', (els) => els.map((e) => ({
    position: Number(e.dataset.position),
    author: e.querySelector('.author').textContent,
    text: e.querySelector('.body').textContent,
  })));
}

async function waitForCount(page, n, timeout = WAIT) {
  await page.waitForFunction(
    (k) => document.querySelectorAll('#messages li.msg').length >= k, n, { timeout },
  );
}

async function sendFromPage(page, author, text) {
  await page.fill('#author', author);
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
  // Sent once the box is cleared (the node answered 201).
  await page.waitForFunction(() => document.querySelector('#text').value === '', null, { timeout: WAIT });
}

function assertOrderedOnce(list, what) {
  const positions = list.map((m) => m.position);
  assert.equal(new Set(positions).size, positions.length, `${what}: a message shows twice: ${positions}`);
  for (let i = 1; i < positions.length; i++) {
    assert.ok(positions[i - 1] < positions[i], `${what}: out of order: ${positions}`);
  }
}

/** Kills node-N and starts it again with the command line it had. */
async function restartNode(i) {
  const pidFile = path.join(stateDir, 'pids', `node-${i}.pid`);
  const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
  const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
  const cwd = fs.readlinkSync(`/proc/${pid}/cwd`);
  log(`killing node-${i} (pid ${pid}): ${argv.join(' ')}`);
  process.kill(pid, 'SIGKILL');
  for (let k = 0; k < 100; k++) {
    try { process.kill(pid, 0); } catch (_) { break; }
    await sleep(50);
  }
  return async () => {
    const out = fs.openSync(path.join(stateDir, 'logs', `node-${i}.log`), 'a');
    const child = spawn(argv[0], argv.slice(1), { cwd, detached: true, stdio: ['ignore', out, out] });
    child.unref();
    fs.closeSync(out);
    fs.writeFileSync(pidFile, `${child.pid}\n`);
    log(`started node-${i} again (pid ${child.pid})`);
    await waitHttp(`${nodes[i].url}/readyz`, 60_000);
  };
}

describe('chat page in headless Chromium', { concurrency: 1, timeout: 45 * 60_000 }, () => {
  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
    fs.mkdirSync(artifacts, { recursive: true });
    log('e2e/processes up --nodes 2 (builds the release binaries first)');
    const up = spawnSync(processes, ['up', '--nodes', '2'], {
      cwd: root, encoding: 'utf8', timeout: 40 * 60_000, stdio: ['ignore', 'pipe', 'inherit'],
    });
    process.stdout.write(up.stdout || '');
    assert.equal(up.status, 0, 'e2e/processes up failed');
    nodes = [...up.stdout.matchAll(/^(node-\d+)\s+(http:\/\/\S+)$/gm)]
      .map((m) => ({ name: m[1], url: m[2] }));
    assert.equal(nodes.length, 2, `expected two node URLs in:\n${up.stdout}`);
    redisPort = Number((up.stdout.match(/^redis\s+redis:\/\/[^:]+:(\d+)/m) || [])[1]);
    assert.ok(redisPort, `expected the redis URL in:\n${up.stdout}`);

    profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-ui-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1100, height: 720 },
    });
  });

  after(async () => {
    if (context) await context.close().catch(() => {});
    processesDown();
    if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
  });

  it('serves the page with its assets and cache headers', async () => {
    const res = await fetch(`${nodes[0].url}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/html/);
    assert.equal(res.headers.get('cache-control'), 'no-cache');
    const html = await res.text();
    const js = html.match(/src="(\/ui\/app\.js\?v=[0-9a-f]+)"/);
    assert.ok(js, 'the page links /ui/app.js with a version');
    const asset = await fetch(`${nodes[0].url}${js[1]}`);
    assert.match(asset.headers.get('content-type'), /^text\/javascript/);
    assert.match(asset.headers.get('cache-control'), /immutable/);
    const again = await fetch(`${nodes[0].url}/`, { headers: { 'If-None-Match': res.headers.get('etag') } });
    assert.equal(again.status, 304);
  });

  it('opens on the channel with the most recent message when the address names none', async () => {
    const ch = `latest-${Date.now()}`;
    await post(nodes[0].url, ch, 'the most recent message');
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(`${nodes[0].url}: ${e.message}`));
    await page.goto(`${nodes[0].url}/`);
    await waitLive(page);
    assert.equal(await page.textContent('#channel-name'), ch);
    await waitForCount(page, 1);
    await page.close();
  });

  it('shows messages sent from both nodes on both pages, once each, in the same order', async () => {
    pageA = await openPage(nodes[0].url, channel);
    pageB = await openPage(nodes[1].url, channel);
    assert.equal(await pageA.textContent('#node-id'), 'node-0');
    assert.equal(await pageB.textContent('#node-id'), 'node-1');
    assert.equal(await pageA.textContent('#channel-name'), channel);

    await sendFromPage(pageA, 'alice', 'Hi Bob, this is Alice on node-0. Grüße from the café!');
    await sendFromPage(pageB, 'bob', 'Hello Alice! Bob here, writing through node-1.');
    await waitForCount(pageA, 2);
    await waitForCount(pageB, 2);
    const a = await shown(pageA);
    const b = await shown(pageB);
    assert.equal(a.length, 2);
    assert.deepEqual(a, b, 'both pages show the same messages in the same order');
    assertOrderedOnce(a, 'node-0 page');
    assert.deepEqual(a.map((m) => m.author), ['alice', 'bob']);
  });

  it('brings the history (and the author name) back after a reload', async () => {
    const before = await shown(pageB);
    await pageB.reload();
    await waitLive(pageB);
    await waitForCount(pageB, before.length);
    assert.deepEqual(await shown(pageB), before);
    assert.equal(await pageB.inputValue('#author'), 'bob', 'author remembered in localStorage');
  });

  it('reconnects after its node restarts and shows what was sent meanwhile', async () => {
    const startAgain = await restartNode(1);
    await pageB.waitForSelector('#conn:not([data-state="live"])', { timeout: WAIT });
    log(`node-1 page while its node is down: ${await pageB.textContent('#conn')}`);
    await sendFromPage(pageA, 'alice', 'Bob, your node just went away. Are you still there?');
    await sendFromPage(pageA, 'alice', 'I will keep writing through node-0 meanwhile.');
    await startAgain();
    await waitLive(pageB);
    await waitForCount(pageB, 4);
    await sendFromPage(pageB, 'bob', 'Back! My page reconnected and caught up on your messages.');
    await waitForCount(pageA, 5);
    await waitForCount(pageB, 5);
    await sleep(500); // room for a duplicate to show up, if the page were to make one
    const a = await shown(pageA);
    const b = await shown(pageB);
    assert.equal(b.length, 5, `node-1 page shows each message once: ${JSON.stringify(b)}`);
    assert.deepEqual(a, b);
    assertOrderedOnce(b, 'node-1 page after the restart');

    await pageA.bringToFront();
    await pageA.screenshot({ path: path.join(artifacts, 'conversation.png') });
    log(`screenshot: ${path.join(artifacts, 'conversation.png')}`);
  });

  it('shows a specific error for an over-long message and keeps the text', async () => {
    const count = (await shown(pageA)).length;
    const long = 'x'.repeat(5000);
    await pageA.fill('#text', long);
    await pageA.press('#text', 'Enter');
    await pageA.waitForSelector('#send-error:not([hidden])', { timeout: WAIT });
    const error = await pageA.textContent('#send-error');
    log(`shown error: ${error}`);
    assert.match(error, /too long/i);
    assert.match(error, /4096/);
    assert.equal(await pageA.inputValue('#text'), long, 'the text stays for editing');
    assert.equal((await shown(pageA)).length, count, 'nothing was added');
    await pageA.screenshot({ path: path.join(artifacts, 'error.png') });
    await pageA.fill('#text', '');
  });

  it('refuses an invalid channel name with a reason', async () => {
    await pageA.fill('#channel-input', 'no spaces!');
    await pageA.press('#channel-input', 'Enter');
    await pageA.waitForSelector('#channel-error:not([hidden])', { timeout: WAIT });
    assert.match(await pageA.textContent('#channel-error'), /Invalid channel name/);
    assert.equal(await pageA.textContent('#channel-name'), channel, 'the channel did not change');
  });

  it('opens a long history on its recent page and loads older pages on scroll', async () => {
    const long = `ui-e2e-long-${tag}`;
    const noise = `ui-e2e-noise-${tag}`;
    const total = 700;
    // Interleave another channel so this one's positions have gaps, as in real use.
    // One at a time, so that text order is position order.
    for (let k = 0; k < total; k++) {
      await post(nodes[0].url, long, `message ${k + 1}`);
      if (k % 10 === 9) await post(nodes[0].url, noise, `noise ${k}`);
    }
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    await page.goto(`${nodes[1].url}/#${long}`);
    await waitLive(page);
    await page.waitForFunction((n) => {
      const last = document.querySelector('#messages li.msg:last-child .body');
      return last && last.textContent === `message ${n}`;
    }, total, { timeout: WAIT });
    const first = await shown(page);
    log(`first screen holds ${first.length} of ${total} messages`);
    assert.ok(first.length < total, 'the first screen does not load the whole history');
    assertOrderedOnce(first, 'recent page');
    for (let i = 0; i < 60; i++) {
      if ((await page.textContent('#history-top')).startsWith('Beginning')) break;
      await page.evaluate(() => { document.querySelector('#history').scrollTop = 0; });
      await sleep(250);
    }
    assert.match(await page.textContent('#history-top'), /^Beginning of/);
    const all = await shown(page);
    assert.equal(all.length, total);
    assertOrderedOnce(all, 'whole history');
    assert.deepEqual(all.map((m) => m.text), Array.from({ length: total }, (_, k) => `message ${k + 1}`));
    await page.close();
  });

  it('shows 503 broker unavailable, and a retry with Enter stores the message once', async () => {
    const pidFile = path.join(stateDir, 'pids', 'redis.pid');
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    // Redis rewrites its process title, so its command line is rebuilt from its own settings.
    const argv = ['redis-server'];
    for (const key of ['bind', 'port', 'dir', 'appendonly', 'appendfsync', 'save', 'protected-mode']) {
      const r = spawnSync('redis-cli', ['-p', String(redisPort), '--raw', 'CONFIG', 'GET', key], { encoding: 'utf8' });
      assert.equal(r.status, 0, `redis-cli CONFIG GET ${key}: ${r.stderr}`);
      const [name, value = ''] = r.stdout.replace(/\n$/, '').split('\n');
      assert.equal(name, key);
      argv.push(`--${key}`, value);
    }
    argv.push('--daemonize', 'no');
    const cwd = fs.readlinkSync(`/proc/${pid}/cwd`);
    log(`stopping redis (pid ${pid})`);
    process.kill(pid, 'SIGTERM');
    for (let k = 0; k < 100; k++) {
      try { process.kill(pid, 0); } catch (_) { break; }
      await sleep(50);
    }
    const before = (await shown(pageA)).length;
    const text = 'Sent while the broker was down, retried with Enter.';
    await pageA.fill('#text', text);
    await pageA.press('#text', 'Enter');
    await pageA.waitForFunction(
      () => /Broker unavailable/.test(document.querySelector('#send-error').textContent),
      null, { timeout: WAIT },
    );
    log(`shown error: ${await pageA.textContent('#send-error')}`);
    assert.equal(await pageA.inputValue('#text'), text, 'the text stays for the retry');

    const out = fs.openSync(path.join(stateDir, 'logs', 'redis.log'), 'a');
    const child = spawn(argv[0], argv.slice(1), { cwd, detached: true, stdio: ['ignore', out, out] });
    child.unref();
    fs.closeSync(out);
    fs.writeFileSync(pidFile, `${child.pid}\n`);
    log(`started redis again (pid ${child.pid}): ${argv.join(' ')}`);
    // Retry as a person would, until the node has its broker back.
    const deadline = Date.now() + 60_000;
    while ((await pageA.inputValue('#text')) !== '') {
      assert.ok(Date.now() < deadline, `no retry succeeded: ${await pageA.textContent('#send-error')}`);
      await pageA.waitForFunction(() => !document.querySelector('#send').disabled, null, { timeout: WAIT });
      await pageA.press('#text', 'Enter');
      await sleep(1000);
    }
    await waitForCount(pageA, before + 1);
    await waitForCount(pageB, before + 1);
    await sleep(500);
    const a = await shown(pageA);
    const b = await shown(pageB);
    assert.equal(a.filter((m) => m.text === text).length, 1, 'stored and shown once');
    assert.deepEqual(a, b);
    assertOrderedOnce(a, 'after the broker came back');
  });

  it('with --auth token: refused without a token, then posts as the token\'s user', async () => {
    // The same data plane, restarted in token mode (one node is enough).
    processesDown();
    const up = spawnSync(processes, ['up', '--nodes', '1', '--auth', 'token'], {
      cwd: root, encoding: 'utf8', timeout: 10 * 60_000, stdio: ['ignore', 'pipe', 'inherit'],
    });
    assert.equal(up.status, 0, 'e2e/processes up --auth token failed');
    const node = (up.stdout.match(/^node-0\s+(http:\/\/\S+)$/m) || [])[1];
    assert.ok(node, `expected node-0's URL in:\n${up.stdout}`);
    const ch = `tok.${tag}`;
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(`${node}: ${e.message}`));
    await page.goto(`${node}/#${ch}`);
    // No token: the page says so (the history answers 401) and is not live.
    await page.waitForFunction(
      () => /Not signed in: .*Paste an access token above/.test(document.querySelector('#banner').textContent)
        && document.querySelector('#conn').dataset.state !== 'live',
      null, { timeout: WAIT },
    );
    const minted = spawnSync(processes, ['token', 'ann', 'tok.*', '600'], { cwd: root, encoding: 'utf8' });
    assert.equal(minted.status, 0, `e2e/processes token failed: ${minted.stderr}`);
    await page.fill('#token', minted.stdout.trim());
    await page.press('#token', 'Enter');
    await waitLive(page);
    // The name field is ignored under token auth: the author is the token's subject.
    await sendFromPage(page, 'mallory', 'signed in by token');
    await waitForCount(page, 1);
    const got = await shown(page);
    assert.deepEqual(got.map((m) => [m.author, m.text]), [['ann', 'signed in by token']]);
    // The token stays in this tab only (sessionStorage), never in the address.
    assert.ok(!page.url().includes(minted.stdout.trim().slice(0, 20)), page.url());
    await page.screenshot({ path: path.join(artifacts, 'token.png') });
    await page.close();
  });

  it('raised no script error in any page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
