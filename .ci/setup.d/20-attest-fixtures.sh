#!/usr/bin/env bash
# Builds the attestation specs' real repositories (Debian, RPM, npm) into .cache/attest/ (cached).
set -euo pipefail
bash scripts/attest-fixtures.sh
