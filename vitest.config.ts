import { existsSync } from 'node:fs';
import { defineConfig, type TestProjectConfiguration } from 'vitest/config';
import { playwright } from '@vitest/browser-playwright';

// Two projects over the same specs: Node, and a real headless Chromium (Debian's
// /usr/bin/chromium, or CHROMIUM_PATH; nothing downloads a browser). Specs that need
// Node (files, servers, system tools) are named *.node.test.ts and run only in Node.
// Without a Chromium the browser project is left out, loudly (under CI=true: an error).
const chromium = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const hasChromium = existsSync(chromium);
if (!hasChromium) {
  const msg = `no Chromium at ${chromium}${process.env.CHROMIUM_PATH ? ' (CHROMIUM_PATH)' : ''}: the browser project (chromium) is left out. Install it (apt-get install chromium, or sudo .ci/install-tools) or set CHROMIUM_PATH to a Chromium or Chrome binary.`;
  if (process.env.CI === 'true') throw new Error(msg);
  console.warn(`\n*** SKIPPING the browser specs: ${msg} ***\n`);
}

const nodeProject: TestProjectConfiguration = {
  test: {
    name: 'node',
    include: ['test/**/*.test.ts'],
    environment: 'node',
    setupFiles: ['test/_setup.ts'],
    globalSetup: ['test/_remote-server.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
  },
};

const browserProject: TestProjectConfiguration = {
  test: {
    name: 'chromium',
    include: ['test/**/*.test.ts'],
    exclude: ['test/**/*.node.test.ts'],
    setupFiles: ['test/_setup.ts'],
    // A server in the Node process for specs that read over HTTP (test/checkpoint-remote.test.ts).
    globalSetup: ['test/_remote-server.ts'],
    testTimeout: 60_000,
    browser: {
      enabled: true,
      headless: true,
      screenshotFailures: false,
      provider: playwright({
        launchOptions: {
          executablePath: chromium,
          args: [
            '--no-sandbox',
            '--disable-gpu',
            '--disable-quic',
            '--no-first-run',
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
          ],
        },
      }),
      instances: [{ browser: 'chromium' }],
    },
  },
};

export default defineConfig({
  test: {
    reporters: ['default', './test/_summary-reporter.ts'],
    projects: hasChromium ? [nodeProject, browserProject] : [nodeProject],
  },
});
