// The tusd-py dashboard: send files with the small tus client in tus.js, watch /api/uploads.
import {
  TusUpload, authHeaders, authToken, fingerprint, forgetStored, setAuthToken, storedUploads,
  STORAGE_PREFIX
} from './tus.js'

const params = new URLSearchParams(location.search)
const ENDPOINT = new URL(params.get('endpoint') ||
  document.querySelector('meta[name="tus-endpoint"]')?.content || '/files/', location.href).href
const CHUNK_SIZE = Math.max(1, Number(params.get('chunkMiB')) || 8) * 1024 * 1024
const POLL_MS = Math.max(250, Number(params.get('pollMs')) || 2000)
const MAX_ACTIVE = 3

const $ = (sel, root = document) => root.querySelector(sel)
const transfersEl = $('#transfers')
const announcer = $('#announcer')
const transfers = []

// ---------------------------------------------------------------------------------------------
// formatting

export function formatBytes (n) {
  if (n === null || n === undefined) return '?'
  const units = ['B', 'KB', 'MB', 'GB', 'TB']
  let i = 0
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++ }
  return `${n.toFixed(i === 0 || n >= 100 ? 0 : 1)} ${units[i]}`
}

function formatDuration (s) {
  if (!Number.isFinite(s)) return ''
  s = Math.max(0, Math.round(s))
  if (s < 60) return `${s} s`
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
}

function formatTime (epoch) {
  if (!epoch) return ''
  return new Date(epoch * 1000).toLocaleString()
}

function el (tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue
    if (k === 'class') node.className = v
    else if (k === 'text') node.textContent = v
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v)
    else node.setAttribute(k, v === true ? '' : v)
  }
  for (const child of children) if (child) node.append(child)
  return node
}

let announceTimer = null
function announce (message) {
  // Clear first so the same sentence twice is read twice.
  clearTimeout(announceTimer)
  announcer.textContent = ''
  announceTimer = setTimeout(() => { announcer.textContent = message }, 50)
}

// ---------------------------------------------------------------------------------------------
// sending files

class Transfer {
  constructor (file) {
    this.file = file
    this.samples = []
    this.milestone = 0
    this.upload = new TusUpload(file, {
      endpoint: ENDPOINT,
      chunkSize: CHUNK_SIZE,
      metadata: { filename: file.name, filetype: file.type || 'application/octet-stream' },
      onProgress: (sent, total) => this.progress(sent, total),
      onStatus: (status, detail) => this.status(status, detail),
      onSuccess: () => { pump(); refreshList() },
      onError: () => pump()
    })
    this.resumable = this.upload.stored()
    this.render()
  }

  render () {
    const name = this.file.name
    this.bar = el('progress', { max: Math.max(this.file.size, 1), value: 0,
      'aria-label': `Progress of ${name}` })
    this.percentEl = el('span', { class: 'percent', text: '0 %' })
    this.rateEl = el('span', { class: 'rate' })
    this.statusEl = el('span', { class: 'status', text: 'queued' })
    this.pauseBtn = el('button', { type: 'button', class: 'pause', text: 'Pause',
      'aria-label': `Pause ${name}`, onclick: () => this.pause() })
    this.resumeBtn = el('button', { type: 'button', class: 'resume', text: 'Resume',
      'aria-label': `Resume ${name}`, hidden: true, onclick: () => this.resume() })
    this.cancelBtn = el('button', { type: 'button', class: 'cancel secondary', text: 'Cancel',
      'aria-label': `Cancel ${name} and delete it from the server`,
      onclick: () => this.cancel() })
    this.node = el('li', { class: 'transfer', 'data-name': name, 'data-state': 'queued' },
      el('div', { class: 'transfer-head' },
        el('span', { class: 'name', text: name }),
        el('span', { class: 'size', text: formatBytes(this.file.size) })),
      this.bar,
      el('div', { class: 'transfer-foot' }, this.percentEl, this.rateEl, this.statusEl),
      el('div', { class: 'actions' }, this.pauseBtn, this.resumeBtn, this.cancelBtn))
    if (this.resumable) this.statusEl.textContent = 'queued (will resume)'
    transfersEl.prepend(this.node)
  }

  get state () { return this.node.dataset.state }

  setState (state) {
    this.node.dataset.state = state
    const running = ['queued', 'creating', 'resuming', 'uploading', 'retrying', 'offline']
    this.pauseBtn.hidden = !running.includes(state)
    this.resumeBtn.hidden = !['paused', 'failed'].includes(state)
    this.cancelBtn.hidden = ['done', 'cancelled'].includes(state)
  }

  progress (sent, total) {
    const now = performance.now()
    this.samples.push({ t: now, sent })
    while (this.samples.length > 2 && now - this.samples[0].t > 5000) this.samples.shift()
    this.bar.value = total ? sent : 1
    const pct = total ? Math.floor((sent / total) * 100) : 100
    this.percentEl.textContent = `${pct} %`
    this.node.dataset.percent = String(pct)
    this.node.dataset.sent = String(sent)
    if (this.upload.url) this.node.dataset.url = this.upload.url
    if (this.upload.resumedFrom !== null) {
      this.node.dataset.resumedFrom = String(this.upload.resumedFrom)
    }
    const first = this.samples[0]
    const dt = (now - first.t) / 1000
    if (dt > 0.3 && sent < total) {
      const rate = (sent - first.sent) / dt
      const eta = rate > 0 ? (total - sent) / rate : Infinity
      this.rateEl.textContent = `${(rate / 1e6).toFixed(1)} MB/s · ${formatDuration(eta)} left`
    }
    const milestone = Math.floor(pct / 25) * 25
    if (milestone > this.milestone && milestone < 100) {
      this.milestone = milestone
      announce(`${this.file.name}: ${milestone} percent sent`)
    }
  }

  status (status, detail) {
    const labels = {
      creating: 'starting',
      resuming: 'checking what the server has',
      uploading: 'sending',
      retrying: `connection problem — ${detail}`,
      offline: 'offline — waiting for the network',
      paused: 'paused',
      done: 'sent',
      failed: `failed: ${detail}`
    }
    this.setState(status)
    this.statusEl.textContent = labels[status] || status
    if (status === 'uploading' && this.upload.resumedFrom > 0 && !this.announcedResume) {
      this.announcedResume = true
      this.statusEl.textContent = `sending (resumed at ${formatBytes(this.upload.resumedFrom)})`
      removeInterrupted(this.upload.key)
    }
    if (['paused', 'done', 'failed'].includes(status)) {
      this.samples = []
      this.rateEl.textContent = ''
    }
    if (status === 'done') {
      this.node.dataset.url = this.upload.url
      announce(`${this.file.name} is uploaded`)
    }
    if (status === 'paused') announce(`${this.file.name} paused`)
    if (status === 'failed') announce(`${this.file.name} failed: ${detail}`)
  }

  pause () {
    if (this.state === 'queued') {
      this.status('paused')
    } else {
      this.upload.pause()
    }
    this.resumeBtn.focus()
    pump()
  }

  resume () {
    this.setState('queued')
    this.statusEl.textContent = 'queued'
    announce(`${this.file.name} resumed`)
    this.pauseBtn.focus()
    pump()
  }

  async cancel () {
    await this.upload.cancel()
    this.setState('cancelled')
    this.statusEl.textContent = 'cancelled'
    this.rateEl.textContent = ''
    announce(`${this.file.name} cancelled`)
    pump()
    refreshList()
  }
}

function pump () {
  const busy = ['creating', 'resuming', 'uploading', 'retrying', 'offline']
  let active = transfers.filter((t) => busy.includes(t.state)).length
  for (const t of [...transfers].reverse()) {
    if (active >= MAX_ACTIVE) break
    if (t.state === 'queued') {
      t.setState('creating')
      t.upload.start()
      active++
    }
  }
}

function addFiles (fileList) {
  const files = [...fileList]
  for (const file of files) {
    const key = STORAGE_PREFIX + fingerprint(file, ENDPOINT)
    const running = transfers.find((t) => t.upload.key === key &&
      !['done', 'cancelled', 'failed'].includes(t.state))
    if (running) continue // the same file twice: one upload is enough
    transfers.push(new Transfer(file))
  }
  if (files.length) announce(`${files.length} file${files.length > 1 ? 's' : ''} added`)
  pump()
}

function setupPicker () {
  const input = $('#file-input')
  const zone = $('#dropzone')
  input.addEventListener('change', () => {
    addFiles(input.files)
    input.value = ''
  })
  for (const type of ['dragenter', 'dragover']) {
    zone.addEventListener(type, (e) => {
      e.preventDefault()
      zone.classList.add('dragging')
    })
  }
  for (const type of ['dragleave', 'dragend']) {
    zone.addEventListener(type, () => zone.classList.remove('dragging'))
  }
  zone.addEventListener('drop', (e) => {
    e.preventDefault()
    zone.classList.remove('dragging')
    if (e.dataTransfer?.files?.length) addFiles(e.dataTransfer.files)
  })
  // A file dropped next to the zone must not make the browser leave the page.
  window.addEventListener('dragover', (e) => e.preventDefault())
  window.addEventListener('drop', (e) => e.preventDefault())
  window.addEventListener('online', () => announce('back online'))
  window.addEventListener('offline', () => announce('offline: uploads will continue when ' +
    'the network is back'))
}

// ---------------------------------------------------------------------------------------------
// unfinished uploads of an earlier visit (the browser cannot reopen a file by itself)

function removeInterrupted (key) {
  const item = document.querySelector(`#interrupted-list li[data-key="${CSS.escape(key)}"]`)
  item?.remove()
  $('#interrupted').hidden = !$('#interrupted-list').children.length
}

async function showInterrupted () {
  const list = $('#interrupted-list')
  const mine = storedUploads().filter((u) => u.key.endsWith('|' + ENDPOINT))
  for (const saved of mine) {
    const info = el('span', { class: 'interrupted-info', text: formatBytes(saved.size) })
    const discard = el('button', { type: 'button', class: 'secondary',
      text: 'Discard', 'aria-label': `Discard the unfinished upload of ${saved.name}` })
    const item = el('li', { 'data-key': saved.key },
      el('span', { class: 'name', text: saved.name }), info, discard)
    discard.addEventListener('click', async () => {
      forgetStored(saved.key)
      removeInterrupted(saved.key)
      try {
        await fetch(saved.url, {
          method: 'DELETE', headers: { 'Tus-Resumable': '1.0.0', ...authHeaders() }
        })
      } catch {}
      refreshList()
    })
    list.append(item)
    fetch(saved.url, {
      method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0', ...authHeaders() }, cache: 'no-store'
    })
      .then((res) => {
        if (res.status === 404 || res.status === 410) {
          forgetStored(saved.key)
          removeInterrupted(saved.key)
          return
        }
        const offset = Number(res.headers.get('Upload-Offset'))
        if (res.ok && saved.size) {
          info.textContent = `${formatBytes(offset)} of ${formatBytes(saved.size)} stored ` +
            `(${Math.floor((offset / saved.size) * 100)} %)`
        }
      })
      .catch(() => {})
  }
  $('#interrupted').hidden = !list.children.length
}

// ---------------------------------------------------------------------------------------------
// uploads on the server, polled from /api/uploads

const serverList = $('#server-uploads')
const listStatus = $('#list-status')
const rendered = new Map() // id -> {node, signature}
let pollTimer = null

function stateLabel (u) {
  if (u.state === 'uploading') {
    return u.size ? `uploading ${Math.floor((u.offset / u.size) * 100)} %` : 'uploading'
  }
  if (u.state === 'completed') return 'waiting for processing'
  return u.state
}

function renderServerUpload (u) {
  const name = u.metadata?.filename || u.id
  const thumb = (u.thumbnails || [])[0]
  const finished = ['completed', 'processing', 'processed', 'failed'].includes(u.state)
  const figure = thumb
    ? el('img', { class: 'thumb', src: authToken() ? null : thumb.url, alt: `Thumbnail of ${name}`,
      width: thumb.width, height: thumb.height, loading: 'lazy' })
    : el('div', { class: 'thumb placeholder', 'aria-hidden': 'true',
      text: (name.split('.').pop() || '').slice(0, 4).toUpperCase() || 'FILE' })
  const details = []
  if (u.image?.width) {
    details.push(`${(u.image.format || 'image').toUpperCase()} ${u.image.width}×${u.image.height}`)
  }
  details.push(u.size === null ? 'size not known yet' : formatBytes(u.size))
  if (u.created_at) details.push(`started ${formatTime(u.created_at)}`)
  const error = u.state === 'failed' && u.processing?.error
    ? el('p', { class: 'error', text: `Reason: ${u.processing.error}` })
    : null
  const progress = u.state === 'uploading' && u.size
    ? el('progress', { max: u.size, value: u.offset, 'aria-label': `Stored part of ${name}` })
    : null
  const link = finished
    ? el('a', { class: 'download', href: u.url, download: name,
      'aria-label': `Download ${name}`, onclick: (event) => downloadWithToken(event, u.url, name) },
    'Download')
    : null
  // An <img> cannot send a header: with a token, the thumbnail is fetched and shown from a blob.
  if (thumb && authToken()) showWithToken(figure, thumb.url)
  return el('li', { class: 'server-upload', 'data-id': u.id, 'data-state': u.state },
    figure,
    el('div', { class: 'server-upload-body' },
      el('div', { class: 'server-upload-head' },
        el('span', { class: 'name', text: name }),
        el('span', { class: `badge state-${u.state}`, text: stateLabel(u) })),
      el('p', { class: 'details', text: details.join(' · ') }),
      progress, error),
    link)
}

function signature (u) {
  return JSON.stringify([u.state, u.offset, u.size, u.processing?.error,
    (u.thumbnails || [])[0]?.url, u.image?.width])
}

async function showWithToken (img, url) {
  try {
    const res = await fetch(url, { headers: authHeaders() })
    if (res.ok) img.src = URL.createObjectURL(await res.blob())
  } catch {}
}

async function downloadWithToken (event, url, name) {
  // A link cannot send a header either: fetch with it, then save the blob.
  if (!authToken()) return
  event.preventDefault()
  const res = await fetch(url, { headers: authHeaders() })
  if (!res.ok) { announce(`Download of ${name} failed: ${res.status}`); return }
  const blobUrl = URL.createObjectURL(await res.blob())
  const a = el('a', { href: blobUrl, download: name })
  document.body.append(a)
  a.click()
  a.remove()
  setTimeout(() => URL.revokeObjectURL(blobUrl), 60000)
}

function askForToken (reason) {
  const form = $('#auth-form')
  form.hidden = false
  $('#auth-reason').textContent = reason
  $('#auth-token').focus()
}

$('#auth-form').addEventListener('submit', (event) => {
  event.preventDefault()
  setAuthToken($('#auth-token').value.trim())
  $('#auth-token').value = ''
  $('#auth-form').hidden = true
  for (const entry of rendered.values()) entry.node.remove()
  rendered.clear()
  refreshList()
})

export async function refreshList () {
  clearTimeout(pollTimer)
  const state = $('#state-filter').value
  const url = `api/uploads?limit=50${state ? '&state=' + encodeURIComponent(state) : ''}`
  try {
    const res = await fetch(url, { cache: 'no-store', headers: authHeaders() })
    if (res.status === 401) {
      askForToken(authToken() ? 'The server refused this token.' : 'This server needs a token.')
      listStatus.textContent = 'Sign in with a token to see and send uploads.'
      return
    }
    if (!res.ok) throw new Error(`${res.status} ${(await res.text()).trim()}`)
    const { uploads } = await res.json()
    const seen = new Set()
    let previous = null
    for (const u of uploads) {
      seen.add(u.id)
      const sig = signature(u)
      let entry = rendered.get(u.id)
      if (!entry || entry.signature !== sig) {
        const node = renderServerUpload(u)
        if (entry) entry.node.replaceWith(node)
        entry = { node, signature: sig }
        rendered.set(u.id, entry)
      }
      // keep the server's order (newest first) without touching nodes already in place
      const want = previous ? previous.nextSibling : serverList.firstChild
      if (want !== entry.node) serverList.insertBefore(entry.node, want)
      previous = entry.node
    }
    for (const [id, entry] of rendered) {
      if (!seen.has(id)) { entry.node.remove(); rendered.delete(id) }
    }
    listStatus.textContent = uploads.length ? '' : 'No uploads yet.'
    serverList.dataset.loaded = 'true'
  } catch (err) {
    listStatus.textContent = `Could not load the list of uploads (${err.message}); retrying.`
  }
  if (!document.hidden) pollTimer = setTimeout(refreshList, POLL_MS)
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refreshList()
})

// ---------------------------------------------------------------------------------------------

$('#endpoint-label').textContent = ENDPOINT
$('#state-filter').addEventListener('change', () => {
  for (const entry of rendered.values()) entry.node.remove()
  rendered.clear()
  refreshList()
})
setupPicker()
showInterrupted()
refreshList()
window.tusdDashboard = { transfers, refreshList }
