#!/usr/bin/env node
/**
 * `node dist/bin/vmkit.js`: the same CLI as the package's bin, dist/bin/vmkit.cjs (which see).
 * @module
 */
import './vmkit.cjs';
