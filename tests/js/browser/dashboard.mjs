#!/usr/bin/env node
// Drive the tusd-py dashboard (served by the server at `/`) in headless Chromium.
//
// Usage: node tests/js/browser/dashboard.mjs '<scenario JSON>'
//
// Scenario: { origin, scenario, files: [paths], screenshot: path, throttleBytesPerSec,
//             thumbnailTimeoutMs, timeoutMs, query: "?chunkMiB=8&pollMs=500" }
//   two_files      pick `files` through the file input; every progress bar reaches 100 %;
//                  the server list shows each upload.
//   drop           drop an in-page File (dropName, dropSize) on the drop zone.
//   thumbnail      pick files[0] (an image); wait until the server list shows it processed
//                  (with its <img> thumbnail loaded) or failed (with the reason shown).
//   pause_resume   throttled; pause at ~25 %, check nothing moves while paused, resume.
//   network_drop   throttled; the network goes offline at ~20 % and comes back; it resumes
//                  by itself.
//   reload_resume  throttled; reload the page at ~30 %, pick the same file again, it resumes.
//   token          the server wants a bearer token: the page asks for it, then sends files[0]
//                  (an image), shows its thumbnail and downloads it (to `downloadTo`).
// Output: one JSON line, {ok, ...scenario-specific fields, pageErrors, consoleErrors}.

import { launch, log, main, throttle } from './lib.mjs'

async function openDashboard (browser, s) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } })
  const pageErrors = []
  const consoleErrors = []
  page.on('pageerror', (e) => pageErrors.push(String(e)))
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()) })
  page.setDefaultTimeout(s.stepTimeoutMs || 60000)
  await page.goto(`${s.origin}/${s.query || ''}`)
  await page.waitForSelector('#server-uploads[data-loaded="true"]', { state: 'attached' })
  return { page, pageErrors, consoleErrors }
}

const transfer = (name) => `.transfer[data-name="${name}"]`
const baseName = (p) => p.split('/').pop()

async function transferInfo (page, name) {
  return page.$eval(transfer(name), (n) => ({
    state: n.dataset.state,
    percent: Number(n.dataset.percent || 0),
    sent: Number(n.dataset.sent || 0),
    url: n.dataset.url || null,
    resumedFrom: n.dataset.resumedFrom === undefined ? null : Number(n.dataset.resumedFrom),
    progressValue: n.querySelector('progress').value,
    progressMax: n.querySelector('progress').max,
    text: n.innerText
  }))
}

async function waitPercent (page, name, percent) {
  await page.waitForFunction(([sel, pct]) => {
    const n = document.querySelector(sel)
    return n && Number(n.dataset.percent || 0) >= pct
  }, [transfer(name), percent])
}

async function waitDone (page, name) {
  await page.waitForSelector(`${transfer(name)}[data-state="done"]`)
  return transferInfo(page, name)
}

async function headOffset (url) {
  const res = await fetch(url, { method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0' } })
  return Number(res.headers.get('upload-offset'))
}

const scenarios = {
  async token (browser, s) {
    const page = await browser.newPage({ viewport: { width: 1100, height: 800 } })
    const pageErrors = []
    page.on('pageerror', (e) => pageErrors.push(String(e)))
    page.setDefaultTimeout(s.stepTimeoutMs || 60000)
    await page.goto(`${s.origin}/${s.query || ''}`)
    await page.waitForSelector('#auth-form:not([hidden])')
    const asked = await page.$eval('#auth-reason', (n) => n.textContent)
    await page.fill('#auth-token', s.token)
    await page.click('#auth-form button[type="submit"]')
    await page.waitForSelector('#server-uploads[data-loaded="true"]', { state: 'attached' })
    const name = baseName(s.files[0])
    await page.setInputFiles('#file-input', s.files[0])
    const done = await waitDone(page, name)
    const id = done.url.split('/').pop()
    const row = `.server-upload[data-id="${id}"][data-state="processed"]`
    await page.waitForSelector(`${row} img.thumb[src^="blob:"]`)
    const thumbWidth = await page.$eval(`${row} img.thumb`, (img) =>
      img.complete ? img.naturalWidth : new Promise((resolve) => {
        img.onload = () => resolve(img.naturalWidth)
      }))
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.click(`${row} a.download`)
    ])
    await download.saveAs(s.downloadTo)
    const tokenInLocalStorage = await page.evaluate(() =>
      Object.values(localStorage).some((v) => v.includes('tusd-py-test-token')))
    if (s.screenshot) await page.screenshot({ path: s.screenshot, fullPage: true })
    return { asked, done, thumbWidth, downloadName: download.suggestedFilename(),
      tokenInLocalStorage, pageErrors }
  },

  async two_files (browser, s) {
    const { page, pageErrors, consoleErrors } = await openDashboard(browser, s)
    // Record what each bar shows while it moves, not only its final state.
    await page.setInputFiles('#file-input', s.files)
    const transfers = []
    for (const file of s.files) {
      const info = await waitDone(page, baseName(file))
      transfers.push({ name: baseName(file), ...info })
    }
    // The server list picks them up on its next poll.
    for (const t of transfers) {
      const id = t.url.split('/').pop()
      await page.waitForSelector(`.server-upload[data-id="${id}"] a.download`)
    }
    const rows = await page.$$eval('.server-upload', (ns) => ns.map((n) => ({
      id: n.dataset.id, state: n.dataset.state, text: n.innerText,
      download: n.querySelector('a.download')?.getAttribute('href') || null
    })))
    const liveRegion = await page.$eval('#announcer', (n) => ({
      live: n.getAttribute('aria-live'), text: n.textContent
    }))
    const labels = await page.$$eval('.transfer progress', (ns) => ns.map((n) =>
      n.getAttribute('aria-label')))
    if (s.screenshot) await page.screenshot({ path: s.screenshot, fullPage: true })
    // Keyboard: the skip link first, then the (visually hidden) file input.
    await page.evaluate(() => document.activeElement?.blur())
    const tabOrder = []
    for (let i = 0; i < 2; i++) {
      await page.keyboard.press('Tab')
      tabOrder.push(await page.evaluate(() => document.activeElement?.id ||
        document.activeElement?.className || document.activeElement?.tagName))
    }
    // A phone: nothing wider than the screen.
    await page.setViewportSize({ width: 360, height: 740 })
    const phone = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth
    }))
    if (s.phoneScreenshot) await page.screenshot({ path: s.phoneScreenshot, fullPage: true })
    return { transfers, rows, liveRegion, labels, tabOrder, phone, pageErrors, consoleErrors }
  },

  async drop (browser, s) {
    const { page, pageErrors, consoleErrors } = await openDashboard(browser, s)
    // A File dropped on the zone, as a drag from the desktop delivers it.
    const dataTransfer = await page.evaluateHandle(([name, size]) => {
      const dt = new DataTransfer()
      const bytes = new Uint8Array(size).map((_, i) => (i * 7) & 255)
      dt.items.add(new File([bytes], name, { type: 'text/plain' }))
      return dt
    }, [s.dropName, s.dropSize])
    await page.dispatchEvent('#dropzone', 'dragenter', { dataTransfer })
    const highlighted = await page.$eval('#dropzone', (n) => n.classList.contains('dragging'))
    await page.dispatchEvent('#dropzone', 'drop', { dataTransfer })
    const done = await waitDone(page, s.dropName)
    const highlightedAfter = await page.$eval('#dropzone', (n) =>
      n.classList.contains('dragging'))
    return { highlighted, highlightedAfter, done, pageErrors, consoleErrors }
  },

  async thumbnail (browser, s) {
    const { page, pageErrors, consoleErrors } = await openDashboard(browser, s)
    await page.setInputFiles('#file-input', s.files[0])
    const info = await waitDone(page, baseName(s.files[0]))
    const id = info.url.split('/').pop()
    const row = `.server-upload[data-id="${id}"]`
    // Processing is asynchronous: wait for an end state, whichever it is.
    await page.waitForSelector(`${row}[data-state="processed"], ${row}[data-state="failed"]`,
      { timeout: s.thumbnailTimeoutMs || 60000 })
    const state = await page.$eval(row, (n) => n.dataset.state)
    let thumb = null
    if (state === 'processed') {
      await page.waitForFunction((sel) => {
        const img = document.querySelector(`${sel} img.thumb`)
        return img && img.complete && img.naturalWidth > 0
      }, row, { timeout: 15000 }).catch(() => {})
      thumb = await page.$eval(row, (n) => {
        const img = n.querySelector('img.thumb')
        return img && { src: img.getAttribute('src'), alt: img.alt,
          naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight }
      })
    }
    const error = await page.$eval(row, (n) => n.querySelector('.error')?.textContent || null)
    const text = await page.$eval(row, (n) => n.innerText)
    if (s.screenshot) await page.screenshot({ path: s.screenshot, fullPage: true })
    return { id, url: info.url, state, thumb, error, text, pageErrors, consoleErrors }
  },

  async pause_resume (browser, s) {
    const { page, pageErrors, consoleErrors } = await openDashboard(browser, s)
    await throttle(page, s.throttleBytesPerSec || 4 * 1024 * 1024)
    const name = baseName(s.files[0])
    await page.setInputFiles('#file-input', s.files[0])
    await waitPercent(page, name, 25)
    await page.click(`${transfer(name)} button.pause`)
    await page.waitForSelector(`${transfer(name)}[data-state="paused"]`)
    const paused = await transferInfo(page, name)
    const resumeFocused = await page.evaluate(() =>
      document.activeElement?.classList.contains('resume'))
    log('paused at', paused.sent)
    await page.waitForTimeout(1500)
    const serverOffsetWhilePaused = await headOffset(paused.url)
    await page.waitForTimeout(1000)
    const serverOffsetLater = await headOffset(paused.url)
    const stillPaused = await transferInfo(page, name)
    if (s.screenshot) await page.screenshot({ path: s.screenshot, fullPage: true })
    // Resume with the keyboard: the Resume button has the focus after Pause.
    await page.focus(`${transfer(name)} button.resume`)
    await page.keyboard.press('Enter')
    const done = await waitDone(page, name)
    return { paused, stillPaused, resumeFocused, serverOffsetWhilePaused, serverOffsetLater,
      done, pageErrors, consoleErrors }
  },

  async network_drop (browser, s) {
    const { page, pageErrors, consoleErrors } = await openDashboard(browser, s)
    const rate = s.throttleBytesPerSec || 4 * 1024 * 1024
    const cdp = await throttle(page, rate)
    const name = baseName(s.files[0])
    await page.setInputFiles('#file-input', s.files[0])
    await waitPercent(page, name, 20)
    const before = await transferInfo(page, name)
    // The network goes away mid-chunk ...
    await cdp.send('Network.emulateNetworkConditions',
      { offline: true, latency: 0, downloadThroughput: -1, uploadThroughput: -1 })
    await page.waitForSelector(
      `${transfer(name)}[data-state="offline"], ${transfer(name)}[data-state="retrying"]`)
    const during = await transferInfo(page, name)
    await page.waitForTimeout(1500)
    const serverOffsetWhileOffline = await headOffset(before.url)
    // ... and comes back: the upload goes on by itself, no click.
    await cdp.send('Network.emulateNetworkConditions',
      { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: rate })
    const done = await waitDone(page, name)
    return { before, during, serverOffsetWhileOffline, done, pageErrors, consoleErrors }
  },

  async reload_resume (browser, s) {
    const { page, pageErrors, consoleErrors } = await openDashboard(browser, s)
    await throttle(page, s.throttleBytesPerSec || 4 * 1024 * 1024)
    const name = baseName(s.files[0])
    await page.setInputFiles('#file-input', s.files[0])
    await waitPercent(page, name, 30)
    const before = await transferInfo(page, name)
    log('reloading at', before.sent)
    await page.reload()
    await page.waitForSelector('#server-uploads[data-loaded="true"]', { state: 'attached' })
    // The earlier visit's upload is offered for resuming ...
    await page.waitForSelector(`#interrupted-list li[data-key*="${name}"]`)
    await page.waitForFunction(() =>
      /stored/.test(document.querySelector('#interrupted-list .interrupted-info')?.textContent))
    const offered = await page.$eval('#interrupted', (n) => n.innerText)
    const serverOffsetAfterReload = await headOffset(before.url)
    // ... and continues when the same file is picked again.
    await page.setInputFiles('#file-input', s.files[0])
    const done = await waitDone(page, name)
    const interruptedLeft = await page.$$eval('#interrupted-list li', (ns) => ns.length)
    const storedKeys = await page.evaluate(() => Object.keys(localStorage)
      .filter((k) => k.startsWith('tusd-py:upload:')))
    if (s.screenshot) await page.screenshot({ path: s.screenshot, fullPage: true })
    return { before, offered, serverOffsetAfterReload, done, interruptedLeft, storedKeys,
      pageErrors, consoleErrors }
  }
}

main(async (s) => {
  const run = scenarios[s.scenario]
  if (!run) throw new Error(`unknown scenario ${s.scenario}`)
  const browser = await launch()
  try {
    return await run(browser, s)
  } finally {
    await browser.close()
  }
})
