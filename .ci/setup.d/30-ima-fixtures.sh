#!/usr/bin/env bash
# IMA measurement lists of real files, checked by evmctl, into .cache/ima/ (cached).
# The specs and benches that read them run the same script, a no-op once cached.
set -euo pipefail
node scripts/ima-fixtures.mjs
