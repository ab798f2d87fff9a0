// A small tus 1.0 client for the tusd-py dashboard (no dependencies, no build step).
//
//   const up = new TusUpload(file, { endpoint: '/files/', metadata: { filename, filetype },
//                                    onProgress, onStatus, onSuccess, onError })
//   up.start()   // creates (POST) or resumes (HEAD) and sends PATCH chunks
//   up.pause()   // aborts the running request; the server keeps the bytes it stored
//   up.start()   // resumes: HEAD for Upload-Offset, then PATCH from there
//
// The upload URL is kept in localStorage under a fingerprint of name + size + lastModified +
// endpoint, so the same file picked again after a reload resumes instead of starting over.
// Network errors, 5xx, 409 (offset mismatch) and 423 (upload busy) are retried with backoff,
// each retry re-HEADing the upload to learn where the server really is.

const TUS_VERSION = '1.0.0'
export const STORAGE_PREFIX = 'tusd-py:upload:'
export const DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
const DEFAULT_RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000]

export class TusError extends Error {
  constructor (message, { status = 0, body = '', retryable = false } = {}) {
    super(message)
    this.name = 'TusError'
    this.status = status
    this.body = body
    this.retryable = retryable
  }
}

export function fingerprint (file, endpoint) {
  return [file.name, file.size, file.lastModified, new URL(endpoint, location.href).href]
    .join('|')
}

function storage () {
  try {
    return window.localStorage
  } catch {
    return null // storage disabled (private mode, sandbox): uploads still work, resuming does not
  }
}

/** Every upload this browser started and did not finish: [{key, url, name, size, ...}] */
export function storedUploads () {
  const store = storage()
  const found = []
  if (!store) return found
  for (let i = 0; i < store.length; i++) {
    const key = store.key(i)
    if (!key || !key.startsWith(STORAGE_PREFIX)) continue
    try {
      found.push({ key, ...JSON.parse(store.getItem(key)) })
    } catch {
      store.removeItem(key)
    }
  }
  return found.sort((a, b) => (b.createdAt || 0) - (a.createdAt || 0))
}

export function forgetStored (key) {
  storage()?.removeItem(key)
}

function encodeMetadata (metadata) {
  const utf8 = (s) => {
    const bytes = new TextEncoder().encode(String(s))
    let bin = ''
    for (const b of bytes) bin += String.fromCharCode(b)
    return btoa(bin)
  }
  return Object.entries(metadata || {})
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => (v === '' ? k : `${k} ${utf8(v)}`))
    .join(',')
}

function isRetryable (status) {
  return status === 0 || status === 409 || status === 423 || status === 429 || status >= 500
}

// A server started with --auth-token / --jwt-* wants `Authorization: Bearer <token>`. The
// page keeps the token for this tab only (sessionStorage), never in localStorage.
const TOKEN_KEY = 'tusd-py-token'

export function authToken () {
  try { return sessionStorage.getItem(TOKEN_KEY) || '' } catch { return '' }
}

export function setAuthToken (token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token)
  else sessionStorage.removeItem(TOKEN_KEY)
}

/** The Authorization header to send, if the user gave a token. */
export function authHeaders () {
  const token = authToken()
  return token ? { Authorization: `Bearer ${token}` } : {}
}

/** One request with XMLHttpRequest (it reports upload progress, fetch does not). */
function request (method, url, { headers = {}, body = null, onUploadProgress, onXhr } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest()
    xhr.open(method, url, true)
    xhr.setRequestHeader('Tus-Resumable', TUS_VERSION)
    for (const [k, v] of Object.entries({ ...authHeaders(), ...headers })) {
      xhr.setRequestHeader(k, v)
    }
    if (onUploadProgress) xhr.upload.onprogress = (e) => onUploadProgress(e.loaded)
    xhr.onload = () => {
      const res = {
        status: xhr.status,
        header: (name) => xhr.getResponseHeader(name),
        body: xhr.responseText
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(res)
      } else {
        const reason = (xhr.responseText || '').trim().split('\n')[0]
        reject(new TusError(`${method} answered ${xhr.status}${reason ? ': ' + reason : ''}`,
          { status: xhr.status, body: xhr.responseText, retryable: isRetryable(xhr.status) }))
      }
    }
    xhr.onerror = () => reject(new TusError(`${method} failed: network error`, { retryable: true }))
    xhr.onabort = () => reject(new TusError(`${method} aborted`, { status: -1 }))
    xhr.ontimeout = () => reject(new TusError(`${method} timed out`, { retryable: true }))
    onXhr?.(xhr)
    xhr.send(body)
  })
}

export class TusUpload {
  constructor (file, options = {}) {
    this.file = file
    this.options = {
      endpoint: '/files/',
      chunkSize: DEFAULT_CHUNK_SIZE,
      retryDelays: DEFAULT_RETRY_DELAYS,
      metadata: {},
      onProgress: () => {}, // (bytesSent, bytesTotal)
      onStatus: () => {}, // ('creating'|'resuming'|'uploading'|'retrying'|'paused'|..., detail)
      onSuccess: () => {}, // (url)
      onError: () => {}, // (TusError)
      ...options
    }
    this.endpoint = new URL(this.options.endpoint, location.href).href
    this.key = STORAGE_PREFIX + fingerprint(file, this.endpoint)
    this.url = null
    this.offset = 0 // bytes the server confirmed
    this.resumedFrom = null // Upload-Offset found by the first HEAD of a stored upload
    this.state = 'idle'
    this._xhr = null
    this._wake = null
    this._runId = 0
  }

  /** The stored upload for this file, if an earlier page started one: {url, ...} | null */
  stored () {
    try {
      return JSON.parse(storage()?.getItem(this.key) || 'null')
    } catch {
      return null
    }
  }

  start () {
    if (this.state === 'running' || this.state === 'done') return
    this.state = 'running'
    const runId = ++this._runId
    this._run(runId).catch((err) => {
      if (runId !== this._runId) return // paused meanwhile: not an error
      this.state = 'failed'
      this.options.onStatus('failed', err.message)
      this.options.onError(err)
    })
  }

  pause () {
    if (this.state !== 'running') return
    this.state = 'paused'
    this._runId++
    this._xhr?.abort()
    this._wake?.()
    this.options.onStatus('paused')
  }

  /** Stop and remove the upload from the server (tus termination). */
  async cancel () {
    this.pause()
    this.state = 'cancelled'
    forgetStored(this.key)
    if (this.url) {
      try {
        await request('DELETE', this.url)
      } catch {
        // already gone or unreachable: nothing else to do
      }
    }
  }

  _live (runId) {
    if (runId !== this._runId) throw new TusError('paused', { status: -1 })
  }

  async _run (runId) {
    let attempt = 0
    let needHead = true
    for (;;) {
      try {
        if (!this.url) {
          const saved = this.stored()
          if (saved?.url) this.url = saved.url
          else await this._create(runId)
          needHead = Boolean(saved?.url)
        }
        if (needHead) {
          await this._head(runId)
          needHead = false
        }
        while (this.offset < this.file.size) {
          await this._patch(runId)
          attempt = 0
        }
        this.state = 'done'
        forgetStored(this.key)
        this.options.onProgress(this.file.size, this.file.size)
        this.options.onStatus('done')
        this.options.onSuccess(this.url)
        return
      } catch (err) {
        this._live(runId)
        if (err.gone && this.url) {
          // The stored upload expired or was removed: start a fresh one.
          forgetStored(this.key)
          this.url = null
          this.offset = 0
          this.resumedFrom = null
          continue
        }
        if (!err.retryable) throw err
        if (navigator.onLine === false) {
          this.options.onStatus('offline', err.message)
          await this._sleep(runId, 0, 'online')
        } else {
          if (attempt >= this.options.retryDelays.length) throw err
          const delay = this.options.retryDelays[attempt++]
          this.options.onStatus('retrying', `${err.message}; retry in ${Math.round(delay / 1000)} s`)
          await this._sleep(runId, delay)
        }
        needHead = Boolean(this.url)
      }
    }
  }

  async _create (runId) {
    this.options.onStatus('creating')
    const headers = { 'Upload-Length': String(this.file.size) }
    const meta = encodeMetadata(this.options.metadata)
    if (meta) headers['Upload-Metadata'] = meta
    const res = await request('POST', this.endpoint, { headers, onXhr: (x) => { this._xhr = x } })
    this._live(runId)
    const location = res.header('Location')
    if (!location) throw new TusError('POST answered without a Location header')
    this.url = new URL(location, this.endpoint).href
    this.offset = 0
    storage()?.setItem(this.key, JSON.stringify({
      url: this.url,
      name: this.file.name,
      size: this.file.size,
      lastModified: this.file.lastModified,
      type: this.file.type,
      createdAt: Date.now()
    }))
  }

  async _head (runId) {
    this.options.onStatus('resuming')
    let res
    try {
      // (no Cache-Control request header: it is not CORS-safelisted; the server answers
      // HEAD with Cache-Control: no-store, as tus requires)
      res = await request('HEAD', this.url, { onXhr: (x) => { this._xhr = x } })
    } catch (err) {
      if ([403, 404, 410].includes(err.status)) err.gone = true
      throw err
    }
    this._live(runId)
    const offset = parseInt(res.header('Upload-Offset'), 10)
    const length = res.header('Upload-Length')
    if (Number.isNaN(offset)) throw new TusError('HEAD answered without Upload-Offset')
    if (length !== null && length !== '' && parseInt(length, 10) !== this.file.size) {
      const err = new TusError('the stored upload has another length')
      err.gone = true
      throw err
    }
    this.offset = offset
    if (this.resumedFrom === null) this.resumedFrom = offset
    this.options.onProgress(this.offset, this.file.size)
  }

  async _patch (runId) {
    this.options.onStatus('uploading')
    const end = Math.min(this.offset + this.options.chunkSize, this.file.size)
    const chunk = this.file.slice(this.offset, end)
    const base = this.offset
    const res = await request('PATCH', this.url, {
      headers: {
        'Upload-Offset': String(this.offset),
        'Content-Type': 'application/offset+octet-stream'
      },
      body: chunk,
      onUploadProgress: (loaded) => {
        if (runId === this._runId) this.options.onProgress(base + loaded, this.file.size)
      },
      onXhr: (x) => { this._xhr = x }
    })
    this._live(runId)
    const offset = parseInt(res.header('Upload-Offset'), 10)
    if (Number.isNaN(offset)) throw new TusError('PATCH answered without Upload-Offset')
    this.offset = offset
    this.options.onProgress(this.offset, this.file.size)
  }

  /** Wait `ms`, or for a window event (e.g. 'online'); pause() wakes it early. */
  _sleep (runId, ms, event) {
    return new Promise((resolve, reject) => {
      let timer = null
      const done = () => {
        clearTimeout(timer)
        if (event) window.removeEventListener(event, done)
        this._wake = null
        if (runId !== this._runId) reject(new TusError('paused', { status: -1 }))
        else resolve()
      }
      this._wake = done
      if (event) window.addEventListener(event, done)
      else timer = setTimeout(done, ms)
    })
  }
}
