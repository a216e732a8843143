# Sourced by fixture scripts that sign with gpg. `gnupg_home DIR` makes DIR a fresh GnuPG
# home, exports GNUPGHOME, and on exit stops the daemons gpg starts there on demand
# (gpg-agent for every secret-key operation, keyboxd where common.conf asks for it): a
# fixture build must leave no process behind (`npm test` runs it lazily).
gnupg_home() {
  rm -rf "$1"
  mkdir -p -m 700 "$1"
  GNUPGHOME=$(cd "$1" && pwd)
  export GNUPGHOME
  trap 'gpgconf --homedir "$GNUPGHOME" --kill all >/dev/null 2>&1 || true' EXIT
}
