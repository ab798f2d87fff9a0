#!/usr/bin/env node
// Drive one upload with the real tus-js-client against a tus server and report what happened.
//
// Usage:   node tests/js/upload.mjs '<scenario JSON>'
//          node tests/js/upload.mjs -          (scenario JSON on stdin)
//
// Scenario fields (all optional except `file` and one of `endpoint` / options.uploadUrl):
//   endpoint            tus creation URL, e.g. http://127.0.0.1:1234/files/
//   file                path of the file to upload
//   source              "file"   -> fs.createReadStream(file)   (tus-js-client FileSource)
//                       "buffer" -> fs.readFileSync(file)       (BufferSource)
//                       "stream" -> a plain Readable (no path)  (StreamSource; needs chunkSize)
//   options             passed to new tus.Upload(...) (chunkSize, parallelUploads, metadata,
//                       uploadLengthDeferred, uploadDataDuringCreation, overridePatchMethod,
//                       retryDelays, headers, uploadUrl, ...). Callbacks are added here.
//   urlStorage          path of a JSON file used as tus FileUrlStorage (enables resuming)
//   resume              true -> findPreviousUploads() + resumeFromPreviousUpload(newest)
//   abortAtFraction     call upload.abort() once progress >= fraction of the file size
//   terminate           with abortAtFraction: abort(true), i.e. also DELETE the upload
//   throttleBytesPerSec limit the rate at which request bodies are fed to the socket
//   progressEvents      true -> write JSON lines {"event": ...} to stderr while running
//   timeoutMs           overall deadline (default 120000); on expiry status "timeout"
//
// Output: exactly one JSON object on the last line of stdout:
//   { ok, status: "success"|"aborted"|"error"|"timeout"|"crash", url, size, bytesSent,
//     progress: {events, first, max, last}, chunks, requests: [...], previousUploads,
//     resumedFrom, error, elapsedMs }
// Exit codes: 0 success / expected abort, 1 upload error, 2 timeout, 3 bad scenario or crash.

import * as fs from 'node:fs'
import { Readable, Transform } from 'node:stream'
import { DefaultHttpStack, FileUrlStorage, Upload } from 'tus-js-client'

const started = Date.now()
let finished = false
let scenario = {}
let upload = null

const result = {
  ok: false,
  status: 'running',
  url: null,
  size: null,
  bytesSent: 0,
  progress: { events: 0, first: null, max: 0, last: null },
  chunks: [],
  requests: [],
  previousUploads: null,
  resumedFrom: null,
  parallelUploadUrls: null,
  error: null,
  elapsedMs: null,
}

function emit(event) {
  if (scenario.progressEvents) {
    try {
      process.stderr.write(`${JSON.stringify({ t: Date.now() - started, ...event })}\n`)
    } catch {
      // stderr closed: nothing useful left to do
    }
  }
}

function describeError(err) {
  if (err == null) return null
  const out = { message: String(err.message ?? err), name: err.name ?? null }
  if (err.stack) out.stack = String(err.stack).split('\n').slice(0, 8).join('\n')
  if (err.code) out.code = err.code
  if (err.causingError) out.causingError = describeError(err.causingError)
  const res = err.originalResponse
  if (res) {
    try {
      out.status = res.getStatus()
      out.body = String(res.getBody() ?? '').slice(0, 2000)
    } catch {
      // ignore: best effort
    }
  }
  const req = err.originalRequest
  if (req) {
    try {
      out.request = { method: req.getMethod(), url: req.getURL() }
    } catch {
      // ignore: best effort
    }
  }
  return out
}

function finish(status, exitCode, err = null) {
  if (finished) return
  finished = true
  result.status = status
  result.ok = status === 'success'
  result.elapsedMs = Date.now() - started
  if (err) result.error = describeError(err)
  if (upload && upload.url && !result.url) result.url = upload.url
  if (upload && upload._parallelUploadUrls) {
    result.parallelUploadUrls = upload._parallelUploadUrls.filter(Boolean)
  }
  emit({ event: 'finish', status })
  const line = `${JSON.stringify(result)}\n`
  // Pipes are synchronous on Linux, but wait for the flush anyway before exiting.
  process.stdout.write(line, () => process.exit(exitCode))
  setTimeout(() => process.exit(exitCode), 2000).unref()
}

process.on('uncaughtException', (err) => finish('crash', 3, err))
process.on('unhandledRejection', (err) => finish('crash', 3, err))

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Counts (and optionally rate-limits) the bytes of a request body on their way to the socket.
class Meter extends Transform {
  constructor(rate, size) {
    super({ highWaterMark: 64 * 1024 })
    this.rate = rate
    this.size = size // tus-js-client's Node HTTP stack reads body.size for Content-Length
    this.count = 0
    this.t0 = null
  }

  async _transform(chunk, _encoding, callback) {
    try {
      if (this.t0 === null) this.t0 = Date.now()
      const piece = 64 * 1024
      for (let off = 0; off < chunk.length; off += piece) {
        const part = chunk.subarray(off, Math.min(off + piece, chunk.length))
        this.count += part.length
        result.bytesSent += part.length
        if (this.rate) {
          const due = this.t0 + (this.count / this.rate) * 1000
          const wait = due - Date.now()
          if (wait > 0) await sleep(wait)
        }
        this.push(part)
      }
      callback()
    } catch (err) {
      callback(err)
    }
  }
}

const HEADERS_OF_INTEREST = [
  'upload-offset',
  'upload-length',
  'upload-defer-length',
  'upload-concat',
  'upload-metadata',
  'x-http-method-override',
  'content-type',
  'origin',
]
const RESPONSE_HEADERS_OF_INTEREST = [
  'location',
  'upload-offset',
  'upload-length',
  'upload-concat',
  'upload-expires',
  'tus-resumable',
  'access-control-allow-origin',
  'access-control-expose-headers',
]

// Wraps tus-js-client's own Node HTTP stack: records every request and meters bodies.
class InstrumentedHttpStack {
  constructor(rate) {
    this.inner = new DefaultHttpStack()
    this.rate = rate
  }

  createRequest(method, url) {
    return new InstrumentedRequest(this.inner.createRequest(method, url), method, url, this.rate)
  }

  getName() {
    return 'InstrumentedNodeHttpStack'
  }
}

class InstrumentedRequest {
  constructor(inner, method, url, rate) {
    this.inner = inner
    this.method = method
    this.url = url
    this.rate = rate
    this.headers = {}
  }

  getMethod() {
    return this.inner.getMethod()
  }

  getURL() {
    return this.inner.getURL()
  }

  setHeader(name, value) {
    this.headers[name.toLowerCase()] = String(value)
    this.inner.setHeader(name, value)
  }

  getHeader(name) {
    return this.inner.getHeader(name)
  }

  setProgressHandler(handler) {
    this.inner.setProgressHandler(handler)
  }

  getUnderlyingObject() {
    return this.inner.getUnderlyingObject()
  }

  abort() {
    if (this.entry) this.entry.aborted = true
    return this.inner.abort()
  }

  send(body = null) {
    const entry = {
      method: this.method,
      url: this.url,
      t: Date.now() - started,
      headers: {},
      bodySize: null,
      status: null,
      responseHeaders: {},
      error: null,
      aborted: false,
    }
    for (const name of HEADERS_OF_INTEREST) {
      if (this.headers[name] !== undefined) entry.headers[name] = this.headers[name]
    }
    this.entry = entry
    result.requests.push(entry)

    let sendBody = body
    if (body instanceof Readable) {
      const meter = new Meter(this.rate, body.size)
      body.on('error', (err) => meter.destroy(err))
      body.pipe(meter)
      sendBody = meter
      entry.bodySize = body.size ?? null
    } else if (body instanceof Uint8Array) {
      entry.bodySize = body.length
      if (this.rate && body.length > 0) {
        const meter = new Meter(this.rate, body.length)
        meter.end(Buffer.from(body.buffer, body.byteOffset, body.length))
        sendBody = meter
      } else {
        result.bytesSent += body.length
      }
    }
    emit({ event: 'request', method: this.method, url: this.url })

    return this.inner.send(sendBody).then(
      (res) => {
        entry.status = res.getStatus()
        for (const name of RESPONSE_HEADERS_OF_INTEREST) {
          const value = res.getHeader(name)
          if (value !== undefined && value !== null) entry.responseHeaders[name] = String(value)
        }
        emit({ event: 'response', method: this.method, status: entry.status })
        return res
      },
      (err) => {
        entry.error = String(err?.code ?? err?.message ?? err)
        emit({ event: 'request-error', method: this.method, error: entry.error })
        throw err
      },
    )
  }
}

function readScenario() {
  const arg = process.argv[2]
  if (arg && arg !== '-') return JSON.parse(arg)
  return JSON.parse(fs.readFileSync(0, 'utf8'))
}

function openSource(kind, file) {
  switch (kind ?? 'file') {
    case 'file':
      return fs.createReadStream(file)
    case 'buffer':
      return fs.readFileSync(file)
    case 'stream': {
      // A Readable without a `path`, so tus-js-client must treat it as a generic stream.
      const inner = fs.createReadStream(file, { highWaterMark: 256 * 1024 })
      return Readable.from(inner, { objectMode: false })
    }
    default:
      throw new Error(`unknown source kind ${kind}`)
  }
}

async function main() {
  try {
    scenario = readScenario()
  } catch (err) {
    finish('crash', 3, new Error(`invalid scenario JSON: ${err.message}`))
    return
  }

  const timeoutMs = Number(scenario.timeoutMs ?? 120000)
  setTimeout(() => {
    if (upload) upload.abort(false).catch(() => {})
    finish('timeout', 2, new Error(`upload did not finish within ${timeoutMs} ms`))
  }, timeoutMs).unref()
  // Keep the event loop alive while waiting for the deadline even if everything stalls.
  const keepAlive = setInterval(() => {}, 1000)

  const fileSize = fs.statSync(scenario.file).size
  result.size = fileSize
  const file = openSource(scenario.source, scenario.file)
  const abortAt =
    scenario.abortAtFraction != null ? Math.floor(fileSize * scenario.abortAtFraction) : null
  let abortRequested = false

  const options = {
    endpoint: scenario.endpoint ?? null,
    ...(scenario.options ?? {}),
    httpStack: new InstrumentedHttpStack(scenario.throttleBytesPerSec ?? 0),
    onProgress(bytesSent, bytesTotal) {
      const p = result.progress
      p.events += 1
      if (p.first === null) p.first = bytesSent
      p.max = Math.max(p.max, bytesSent)
      p.last = bytesSent
      emit({ event: 'progress', bytes: bytesSent, total: bytesTotal ?? fileSize })
      if (abortAt !== null && !abortRequested && bytesSent >= abortAt) {
        abortRequested = true
        emit({ event: 'abort', bytes: bytesSent })
        result.abortedAtBytes = bytesSent
        upload
          .abort(Boolean(scenario.terminate))
          .then(() => {
            result.url = upload.url
            clearInterval(keepAlive)
            finish('aborted', 0)
          })
          .catch((err) => finish('error', 1, err))
      }
    },
    onChunkComplete(chunkSize, bytesAccepted, bytesTotal) {
      if (result.chunks.length < 10000) result.chunks.push([chunkSize, bytesAccepted, bytesTotal])
    },
    onUploadUrlAvailable() {
      emit({ event: 'url', url: upload.url })
    },
    onSuccess() {
      clearInterval(keepAlive)
      result.url = upload.url
      finish('success', 0)
    },
    onError(err) {
      clearInterval(keepAlive)
      finish('error', 1, err)
    },
  }
  if (scenario.urlStorage) options.urlStorage = new FileUrlStorage(scenario.urlStorage)

  upload = new Upload(file, options)

  if (scenario.resume) {
    const previous = await upload.findPreviousUploads()
    result.previousUploads = previous.length
    if (previous.length > 0) {
      previous.sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime))
      result.resumedFrom = previous[0].uploadUrl ?? previous[0].parallelUploadUrls ?? null
      upload.resumeFromPreviousUpload(previous[0])
    }
  }
  emit({ event: 'start', size: fileSize })
  upload.start()
}

main().catch((err) => finish('crash', 3, err))
