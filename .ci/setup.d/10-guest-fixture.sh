#!/usr/bin/env bash
# Boots a real Linux guest under QEMU and saves its memory, registers and QEMU's
# own `info tlb` into .cache/guest/ (cached by content; see scripts/guest-fixture.mjs).
# Specs that compare against QEMU's page walk run the same script, a no-op once cached.
set -euo pipefail
node scripts/guest-fixture.mjs all
