#!/usr/bin/env node
/**
 * The `vmkit` executable.
 * @module
 */
import { main } from '../cli/main.js';

process.exitCode = await main(process.argv.slice(2), process);
