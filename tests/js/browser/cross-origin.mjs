#!/usr/bin/env node
// tus-js-client's browser bundle and Uppy's (with @uppy/tus inside) in headless Chromium,
// loaded from a second origin (a static server started here on another port), so every tus
// request to tusd-py is cross-origin and goes through CORS (preflights, exposed headers).
//
// Usage: node tests/js/browser/cross-origin.mjs '<scenario JSON>'
//
// Scenario: { endpoint, client: "tus-js-client" | "uppy", size, seed, throttleBytesPerSec,
//             interruptAt (fraction), timeoutMs }
//   tus-js-client: start, upload.abort() at `interruptAt`, reload the page, findPreviousUploads()
//                  + resumeFromPreviousUpload() from localStorage, finish.
//   uppy:          start, reload the page at `interruptAt` (the tab is closed mid-request), add
//                  the same file again: @uppy/tus resumes from its stored fingerprint.
// The file is a deterministic pseudo-random File built in the page from `seed`, so the page
// after the reload builds the same bytes; its sha256 is computed in the page (WebCrypto).
// Output: one JSON line: {ok, pageOrigin, url, firstUrl, sha256, interruptedAt,
//   serverOffsetAfterInterrupt, previousUploads, resumePatchOffsets, patches, tusResponses,
//   pageErrors}

import * as fs from 'node:fs'
import * as http from 'node:http'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { launch, log, main, throttle } from './lib.mjs'

const JS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const ASSETS = {
  '/tus.min.js': path.join(JS_DIR, 'node_modules/tus-js-client/dist/tus.min.js'),
  '/uppy.min.js': path.join(JS_DIR, 'node_modules/uppy/dist/uppy.min.js')
}

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>cross-origin tus test</title>
<link rel="icon" href="data:,">
<script src="/tus.min.js"></script>
<script src="/uppy.min.js"></script>
<script>
// xorshift32, so the page after a reload regenerates exactly the same bytes
function makeFile (size, seed, name) {
  const bytes = new Uint8Array(size)
  const words = new Uint32Array(bytes.buffer, 0, Math.floor(size / 4))
  let x = seed >>> 0 || 1
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    words[i] = x
  }
  for (let i = words.length * 4; i < size; i++) bytes[i] = i & 255
  return new File([bytes], name, { type: 'application/octet-stream', lastModified: 1700000000000 })
}
async function sha256 (blob) {
  const digest = await crypto.subtle.digest('SHA-256', await blob.arrayBuffer())
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('')
}
window.state = { progress: 0, events: [] }
</script></head><body><h1>cross-origin tus client test</h1></body></html>`

function startStaticServer (port) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x')
    if (url.pathname === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' })
      res.end(PAGE)
    } else if (ASSETS[url.pathname]) {
      res.writeHead(200, { 'Content-Type': 'text/javascript' })
      fs.createReadStream(ASSETS[url.pathname]).pipe(res)
    } else {
      res.writeHead(404)
      res.end()
    }
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port || 0, '127.0.0.1', () => resolve(server))
  })
}

// --------------------------------------------------------------------------------------------
// in-page drivers (run with page.evaluate)

async function tusStart ({ endpoint, size, seed, interruptAt, resume }) {
  const file = makeFile(size, seed, 'blob-tus.bin')
  const upload = new tus.Upload(file, {
    endpoint,
    metadata: { filename: file.name, filetype: file.type },
    retryDelays: [0, 500, 1000, 2000],
    removeFingerprintOnSuccess: false,
    onProgress (sent, total) { window.state.progress = sent / total },
    onSuccess () { window.state.done = true },
    onError (err) { window.state.error = String(err) }
  })
  window.upload = upload
  const previous = await upload.findPreviousUploads()
  window.state.previousUploads = previous.map((p) => ({ uploadUrl: p.uploadUrl, size: p.size }))
  if (resume && previous.length) upload.resumeFromPreviousUpload(previous[0])
  upload.start()
  if (interruptAt) {
    // abort midway: the request is cancelled, the URL stays in localStorage
    await new Promise((resolve) => {
      const t = setInterval(() => {
        if (window.state.progress >= interruptAt || window.state.done || window.state.error) {
          clearInterval(t)
          resolve()
        }
      }, 20)
    })
    await upload.abort(false)
    window.state.abortedAt = window.state.progress
    return { url: upload.url, abortedAt: window.state.progress,
      stored: Object.keys(localStorage).filter((k) => k.startsWith('tus::')) }
  }
  await new Promise((resolve) => {
    const t = setInterval(() => {
      if (window.state.done || window.state.error) { clearInterval(t); resolve() }
    }, 50)
  })
  if (window.state.error) throw new Error(window.state.error)
  return { url: upload.url, sha256: await sha256(file), previousUploads: window.state.previousUploads }
}

async function uppyStart ({ endpoint, size, seed, wait }) {
  const file = makeFile(size, seed, 'blob-uppy.bin')
  const uppy = new Uppy.Uppy({ autoProceed: false })
  uppy.use(Uppy.Tus, { endpoint, retryDelays: [0, 500, 1000, 2000] })
  uppy.on('upload-progress', (f, p) => {
    window.state.progress = p.bytesUploaded / (p.bytesTotal || size)
  })
  uppy.on('upload-success', (f, response) => {
    window.state.done = true
    window.state.url = response.uploadURL
  })
  uppy.on('upload-error', (f, err) => { window.state.error = String(err) })
  uppy.addFile({ name: file.name, type: file.type, data: file, source: 'test' })
  window.uppy = uppy
  uppy.upload().catch((err) => { window.state.error = String(err) })
  if (!wait) return {}
  await new Promise((resolve) => {
    const t = setInterval(() => {
      if (window.state.done || window.state.error) { clearInterval(t); resolve() }
    }, 50)
  })
  if (window.state.error) throw new Error(window.state.error)
  return { url: window.state.url, sha256: await sha256(file),
    stored: Object.keys(localStorage).filter((k) => k.startsWith('tus::')) }
}

// --------------------------------------------------------------------------------------------

main(async (s) => {
  const staticServer = await startStaticServer(s.pagePort)
  const pageOrigin = `http://127.0.0.1:${staticServer.address().port}`
  const browser = await launch()
  try {
    const page = await browser.newPage()
    page.setDefaultTimeout(60000)
    const pageErrors = []
    page.on('pageerror', (e) => pageErrors.push(String(e)))
    const patches = []
    const tusResponses = [] // what CORS let the page see: {method, status, origin, allowOrigin}
    let reloaded = false
    page.on('request', (req) => {
      if (req.method() === 'PATCH') {
        patches.push({ afterReload: reloaded, offset: Number(req.headers()['upload-offset']) })
      }
    })
    const pending = new Set()
    page.on('requestfinished', (req) => {
      if (!req.url().startsWith(new URL(s.endpoint).origin)) return
      const p = recordResponse(req).finally(() => pending.delete(p))
      pending.add(p)
    })
    async function recordResponse (req) {
      try {
        const res = await req.response()
        const headers = res ? await res.allHeaders() : {}
        const sent = await req.allHeaders()
        tusResponses.push({ method: req.method(), status: res?.status() ?? null,
          origin: sent.origin || null,
          allowOrigin: headers['access-control-allow-origin'] || null,
          exposeHeaders: headers['access-control-expose-headers'] || null })
      } catch (err) {
        tusResponses.push({ method: req.method(), error: String(err) })
      }
    }
    await page.goto(`${pageOrigin}/`)
    await throttle(page, s.throttleBytesPerSec || 2 * 1024 * 1024)
    const args = { endpoint: s.endpoint, size: s.size, seed: s.seed || 12345 }

    let firstUrl
    let interruptedAt
    if (s.client === 'tus-js-client') {
      const first = await page.evaluate(tusStart, { ...args, interruptAt: s.interruptAt || 0.4 })
      firstUrl = first.url
      interruptedAt = first.abortedAt
      if (!first.stored.length) throw new Error('tus-js-client stored no fingerprint')
    } else {
      await page.evaluate(uppyStart, { ...args, wait: false })
      await page.waitForFunction((f) => window.state.progress >= f, s.interruptAt || 0.4)
      interruptedAt = await page.evaluate(() => window.state.progress)
      const stored = await page.evaluate(() => Object.entries(localStorage)
        .filter(([k]) => k.startsWith('tus::')).map(([, v]) => JSON.parse(v)))
      if (!stored.length) throw new Error('@uppy/tus stored no fingerprint')
      firstUrl = stored[0].uploadUrl
    }
    log(`${s.client}: interrupted at ${(interruptedAt * 100).toFixed(0)} %, reloading`)
    reloaded = true
    await page.reload()
    // Where the server stands now that the first page is gone (HEAD from Node: no CORS here).
    const head = await fetch(firstUrl, { method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0' } })
    const serverOffsetAfterInterrupt = Number(head.headers.get('upload-offset'))
    const second = s.client === 'tus-js-client'
      ? await page.evaluate(tusStart, { ...args, resume: true })
      : await page.evaluate(uppyStart, { ...args, wait: true })
    // let the last responses' headers be read before the browser closes
    await Promise.allSettled([...pending])
    return {
      pageOrigin,
      firstUrl,
      url: second.url,
      sha256: second.sha256,
      interruptedAt,
      serverOffsetAfterInterrupt,
      previousUploads: second.previousUploads || null,
      resumePatchOffsets: patches.filter((p) => p.afterReload).map((p) => p.offset),
      patches,
      tusResponses: [...tusResponses],
      pageErrors
    }
  } finally {
    await browser.close()
    staticServer.close()
  }
})
