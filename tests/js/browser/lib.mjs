// Shared helpers for the real-browser tests: launch Debian's Chromium with playwright-core,
// run one scenario under a deadline, print exactly one JSON result line on stdout.
//
// The browser is never downloaded: CHROMIUM_PATH (default /usr/bin/chromium) is launched.
// Any failure to start it is an error (exit 3), never a skip.

import { chromium } from 'playwright-core'

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage'
]

export async function launch () {
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS, timeout: 60000 })
}

/** Limit the page's upload rate with Chromium's own network emulation (CDP). */
export async function throttle (page, bytesPerSecond) {
  const cdp = await page.context().newCDPSession(page)
  await cdp.send('Network.enable')
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: bytesPerSecond > 0 ? bytesPerSecond : -1
  })
  return cdp
}

export function log (...args) {
  process.stderr.write(`[${new Date().toISOString()}] ${args.join(' ')}\n`)
}

/** Parse argv[2] as the scenario JSON, run `fn(scenario)`, print its result as JSON. */
export async function main (fn) {
  let scenario
  try {
    scenario = JSON.parse(process.argv[2] || '{}')
  } catch (err) {
    console.log(JSON.stringify({ ok: false, error: `bad scenario JSON: ${err.message}` }))
    process.exit(3)
  }
  const timeoutMs = scenario.timeoutMs || 120000
  const timer = setTimeout(() => {
    console.log(JSON.stringify({ ok: false, error: `timed out after ${timeoutMs} ms` }))
    process.exit(2)
  }, timeoutMs)
  try {
    const result = await fn(scenario)
    clearTimeout(timer)
    console.log(JSON.stringify({ ok: true, ...result }))
    process.exit(0)
  } catch (err) {
    clearTimeout(timer)
    console.log(JSON.stringify({ ok: false, error: String(err?.stack || err) }))
    process.exit(1)
  }
}
