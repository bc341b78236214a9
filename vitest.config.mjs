// Unit tests for the extension's pure logic: no JupyterLab, no browser.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: { include: ['labextension/test/**/*.test.ts'], environment: 'node' }
});
