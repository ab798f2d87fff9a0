#!/usr/bin/env node
// Make the README's dashboard screenshot (docs/dashboard.png) against a running server:
//   node tests/js/browser/readme-screenshot.mjs '{"origin": "http://127.0.0.1:1080",
//     "done": ["a.jpg", "b.jpg"], "running": "big.mp4", "paused": "backup.tar",
//     "out": "docs/dashboard.png"}'
// `done` files are sent first and processed; then `running` (throttled) and `paused` are
// started, `paused` is paused, and the page is shot while `running` is on its way.

import { launch, main, throttle } from './lib.mjs'

main(async (s) => {
  const browser = await launch()
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 900 },
      deviceScaleFactor: 1 })
    await page.goto(`${s.origin}/?pollMs=500`)
    await page.setInputFiles('#file-input', s.done)
    for (const f of s.done) {
      const name = f.split('/').pop()
      await page.waitForSelector(`.transfer[data-name="${name}"][data-state="done"]`)
    }
    await page.waitForFunction((n) => document.querySelectorAll(
      '.server-upload[data-state="processed"], .server-upload[data-state="failed"]').length >= n,
    s.done.length, { timeout: 60000 })
    await page.waitForTimeout(800)
    await page.reload()
    await throttle(page, s.throttleBytesPerSec || 3 * 1024 * 1024)
    await page.setInputFiles('#file-input', [s.paused, s.running])
    const paused = s.paused.split('/').pop()
    const running = s.running.split('/').pop()
    await page.waitForFunction((n) => Number(document.querySelector(
      `.transfer[data-name="${n}"]`)?.dataset.percent || 0) >= 12, paused, { timeout: 60000 })
    await page.click(`.transfer[data-name="${paused}"] button.pause`)
    await page.waitForFunction((n) => Number(document.querySelector(
      `.transfer[data-name="${n}"]`)?.dataset.percent || 0) >= 30, running, { timeout: 90000 })
    await page.mouse.move(0, 0)
    await page.screenshot({ path: s.out, fullPage: true })
    return { out: s.out }
  } finally {
    await browser.close()
  }
})
