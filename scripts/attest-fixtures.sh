#!/usr/bin/env bash
# Builds real package repositories for the attestation specs into .cache/attest/
# with each ecosystem's own tools, signed by throwaway keys made here:
#   gnupg/         throwaway GnuPG home: key "good" (signs) and key "other" (a key nobody trusts)
#   keyring.gpg    binary keyring with the good key (as /usr/share/keyrings/*.gpg); keyring.asc armored
#   debian/        a Debian repository: real .debs fetched with `apt-get download`, indexed by
#                  `apt-ftparchive`, Release signed (InRelease + Release.gpg), Valid-Until in 10 years
#   debian-expired/   same packages, Valid-Until in the past (correctly signed)
#   debian-other/     same packages, signed by the other key
#   rpm/           tiny .rpm files built with `rpmbuild`, repodata by `createrepo_c`, repomd.xml.asc
#   rpm-xz/        the same with xz-compressed repodata
#   rpm-ext/       the same with filelists-ext.xml (file digests), added by modifyrepo_c
#   npm/           packument, tarballs (`npm pack`), registry keys and ECDSA P-256 signatures
#   apk/           Alpine APKINDEX.tar.gz signed as abuild-sign signs (openssl + tar + gzip): x86_64/ with
#                  .SIGN.RSA (SHA-1), x86_64-256/ with .SIGN.RSA256; keys vmkit-test.rsa.pub, other.rsa.pub
# Cached: a stamp holds this script's hash; a second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.cache/attest
stamp="$out/.stamp"
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
for t in apt-ftparchive gpg createrepo_c rpmbuild dpkg-deb xz gzip zstd npm openssl; do
  command -v "$t" >/dev/null || { echo "attest-fixtures: missing $t (see .ci/apt-packages.txt)" >&2; exit 1; }
done
# A throwaway GnuPG home; its gpg-agent is stopped when this script exits (and one an older
# build of this script left running there is stopped before the home is removed).
. scripts/_gnupg-home.sh
[ -d "$out/gnupg" ] && gpgconf --homedir "$out/gnupg" --kill all >/dev/null 2>&1 || true
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)
gnupg_home "$out/gnupg"

# --- keys -----------------------------------------------------------------
gpg --batch --quiet --passphrase '' --quick-gen-key 'vmkit attest fixture <good@vmkit.invalid>' ed25519 sign never
gpg --batch --quiet --passphrase '' --quick-gen-key 'vmkit untrusted <other@vmkit.invalid>' ed25519 sign never
good=$(gpg --batch --with-colons --list-keys good@vmkit.invalid | awk -F: '/^fpr/ {print $10; exit}')
other=$(gpg --batch --with-colons --list-keys other@vmkit.invalid | awk -F: '/^fpr/ {print $10; exit}')
gpg --batch --export "$good" >"$out/keyring.gpg"
gpg --batch --armor --export "$good" >"$out/keyring.asc"
gpg --batch --export "$other" >"$out/other-keyring.gpg"

# --- Debian ---------------------------------------------------------------
debs="hello tree pv python3-six"
mkdir -p "$out/pool"
if ! (cd "$out/pool" && apt-get download $debs >/dev/null 2>&1); then
  apt-get update >/dev/null
  (cd "$out/pool" && apt-get download $debs >/dev/null)
fi

# Own packages with gzip and zstd data members (Debian's are xz; Ubuntu's zstd), built by dpkg-deb.
for z in gzip zstd; do
  d="$out/build-$z"
  mkdir -p "$d/DEBIAN" "$d/usr/share/vmkit-fixture" "$d/usr/bin"
  printf 'Package: vmkit-fixture-%s\nVersion: 1:1.0-1\nArchitecture: all\nMaintainer: vmkit <dev@vmkit.invalid>\nDescription: vmkit attestation fixture (%s data)\n' "$z" "$z" >"$d/DEBIAN/control"
  printf 'vmkit fixture, %s data member\n' "$z" >"$d/usr/share/vmkit-fixture/$z.txt"
  printf '#!/bin/sh\necho vmkit %s\n' "$z" >"$d/usr/bin/vmkit-fixture-$z"
  chmod 755 "$d/usr/bin/vmkit-fixture-$z"
  ln -s vmkit-fixture-$z "$d/usr/bin/vmkit-fixture-$z-link"
  dpkg-deb --root-owner-group -Z"$z" -b "$d" "$out/pool/vmkit-fixture-${z}_1.0-1_all.deb" >/dev/null
  rm -rf "$d"
done

make_debian() { # dir valid-until key
  local dir="$out/$1" valid="$2" key="$3"
  mkdir -p "$dir/pool/main" "$dir/dists/bookworm/main/binary-amd64"
  cp "$out"/pool/*.deb "$dir/pool/main/"
  (cd "$dir" && apt-ftparchive packages pool/main >dists/bookworm/main/binary-amd64/Packages)
  gzip -9kn "$dir/dists/bookworm/main/binary-amd64/Packages"
  xz -9k "$dir/dists/bookworm/main/binary-amd64/Packages"
  (cd "$dir/dists/bookworm" && apt-ftparchive \
    -o APT::FTPArchive::Release::Origin=vmkit -o APT::FTPArchive::Release::Label=vmkit \
    -o APT::FTPArchive::Release::Suite=stable -o APT::FTPArchive::Release::Codename=bookworm \
    -o APT::FTPArchive::Release::Architectures=amd64 -o APT::FTPArchive::Release::Components=main \
    release . >Release.new && mv Release.new Release)
  # apt-ftparchive only derives Valid-Until from a validity period; write the date given.
  sed -i "/^Date: /a Valid-Until: $valid" "$dir/dists/bookworm/Release"
  gpg --batch --yes --local-user "$key" --clearsign -o "$dir/dists/bookworm/InRelease" "$dir/dists/bookworm/Release"
  gpg --batch --yes --local-user "$key" --detach-sign -o "$dir/dists/bookworm/Release.gpg" "$dir/dists/bookworm/Release"
}
make_debian debian "$(date -u -R -d '+10 years')" "$good"
make_debian debian-expired "$(date -u -R -d '-2 days')" "$good"
make_debian debian-other "$(date -u -R -d '+10 years')" "$other"

# --- RPM ------------------------------------------------------------------
rb="$out/rpmbuild"
mkdir -p "$rb/SPECS" "$out/rpm"
for v in 1.0 1.1; do
  cat >"$rb/SPECS/vmkit-fixture.spec" <<EOF
Name: vmkit-fixture
Version: $v
Release: 1
Summary: vmkit attestation fixture
License: MIT
BuildArch: noarch
%description
A tiny package for vmkit's attestation specs.
%install
mkdir -p %{buildroot}/usr/share/vmkit-fixture
printf 'vmkit fixture %s\n' $v >%{buildroot}/usr/share/vmkit-fixture/hello.txt
%files
/usr/share/vmkit-fixture/hello.txt
EOF
  rpmbuild --quiet --define "_topdir $rb" --define '_source_payload w9.gzdio' --define '_binary_payload w9.gzdio' \
    -bb "$rb/SPECS/vmkit-fixture.spec" >/dev/null 2>&1
done
cp "$rb"/RPMS/noarch/*.rpm "$out/rpm/"
createrepo_c --quiet "$out/rpm" >/dev/null
gpg --batch --yes --local-user "$good" --armor --detach-sign -o "$out/rpm/repodata/repomd.xml.asc" "$out/rpm/repodata/repomd.xml"
# The same packages with xz-compressed repodata.
mkdir -p "$out/rpm-xz"
cp "$rb"/RPMS/noarch/*.rpm "$out/rpm-xz/"
createrepo_c --quiet --general-compress-type=xz "$out/rpm-xz" >/dev/null
gpg --batch --yes --local-user "$good" --armor --detach-sign -o "$out/rpm-xz/repodata/repomd.xml.asc" "$out/rpm-xz/repodata/repomd.xml"
# The same packages with filelists-ext.xml (file digests in the repodata), as createrepo_c 0.21+
# writes with --filelists-ext; Debian's createrepo-c 0.17 cannot, so it is written here in that
# format from `rpm -qp --dump` (rpm's own digests of each file), added by `modifyrepo_c` and signed.
mkdir -p "$out/rpm-ext"
cp "$rb"/RPMS/noarch/*.rpm "$out/rpm-ext/"
createrepo_c --quiet "$out/rpm-ext" >/dev/null
fx="$out/filelists-ext.xml"
{
  printf '<?xml version="1.0" encoding="UTF-8"?>\n'
  printf '<filelists-ext xmlns="http://linux.duke.edu/metadata/filelists-ext" packages="%s">\n' "$(ls "$out/rpm-ext"/*.rpm | wc -l)"
  for f in "$out/rpm-ext"/*.rpm; do
    printf '<package pkgid="%s" name="%s" arch="%s">\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$(rpm -qp --qf '%{NAME}' "$f")" "$(rpm -qp --qf '%{ARCH}' "$f")"
    printf '  <version epoch="%s" ver="%s" rel="%s"/>\n' "$(rpm -qp --qf '%{EPOCHNUM}' "$f")" "$(rpm -qp --qf '%{VERSION}' "$f")" "$(rpm -qp --qf '%{RELEASE}' "$f")"
    printf '  <checksum type="sha256"/>\n'
    # --dump: path size mtime digest mode owner group isconfig isdoc rdev symlink
    rpm -qp --dump "$f" | while read -r path size mtime digest mode rest; do
      case "$mode" in
        0100*) printf '  <file hash="%s">%s</file>\n' "$digest" "$path" ;;
        040*) printf '  <file type="dir">%s</file>\n' "$path" ;;
      esac
    done
    printf '</package>\n'
  done
  printf '</filelists-ext>\n'
} >"$fx"
modifyrepo_c --mdtype=filelists-ext --compress-type=gz "$fx" "$out/rpm-ext/repodata" >/dev/null
rm -f "$fx"
gpg --batch --yes --local-user "$good" --armor --detach-sign -o "$out/rpm-ext/repodata/repomd.xml.asc" "$out/rpm-ext/repodata/repomd.xml"
rm -rf "$rb"

# --- npm ------------------------------------------------------------------
mkdir -p "$out/npm/src" "$out/npm/tarballs"
for v in 1.0.0 1.0.1; do
  rm -rf "$out/npm/src"/*
  printf '{"name":"vmkit-fixture","version":"%s","main":"index.js"}\n' "$v" >"$out/npm/src/package.json"
  printf 'module.exports = "vmkit fixture %s";\n' "$v" >"$out/npm/src/index.js"
  (cd "$out/npm/src" && npm pack --silent --pack-destination "$out/npm/tarballs" >/dev/null 2>&1)
done
rm -rf "$out/npm/src"
# Packument and registry signatures as the npm registry writes them: ECDSA P-256 over
# "<name>@<version>:<integrity>", keys at /-/npm/v1/keys.
node --input-type=module - "$out/npm" <<'EOF'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
const dir = process.argv[2];
const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const spki = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
const keyid = 'SHA256:' + createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
const versions = {};
for (const f of readdirSync(dir + '/tarballs').sort()) {
  const bytes = readFileSync(dir + '/tarballs/' + f);
  const version = f.replace(/^vmkit-fixture-/, '').replace(/\.tgz$/, '');
  const integrity = 'sha512-' + createHash('sha512').update(bytes).digest('base64');
  const sig = sign('sha256', Buffer.from(`vmkit-fixture@${version}:${integrity}`), privateKey).toString('base64');
  versions[version] = {
    name: 'vmkit-fixture', version,
    dist: { integrity, shasum: createHash('sha1').update(bytes).digest('hex'), tarball: `REGISTRY/vmkit-fixture/-/${f}`, signatures: [{ keyid, sig }] },
  };
}
writeFileSync(dir + '/packument.json', JSON.stringify({ name: 'vmkit-fixture', 'dist-tags': { latest: '1.0.1' }, versions }, null, 1));
writeFileSync(dir + '/keys.json', JSON.stringify({ keys: [{ expires: null, keyid, keytype: 'ecdsa-sha2-nistp256', scheme: 'ecdsa-sha2-nistp256', key: spki }] }));
EOF

# --- apk ------------------------------------------------------------------
# Control segments (gzip of a tar holding .PKGINFO, as in an .apk), an APKINDEX whose C: is
# "Q1" + base64 SHA-1 of each, and the index signed the way abuild-sign does it: openssl dgst
# over the control tar.gz, the signature in a tar with its end blocks cut (abuild-tar --cut:
# header + one data block), gzipped, put in front.
apk="$out/apk"
mkdir -p "$apk/tmp" "$apk/pkgs"
for k in vmkit-test other; do
  openssl genrsa -out "$apk/$k.rsa" 2048 2>/dev/null
  openssl rsa -in "$apk/$k.rsa" -pubout -out "$apk/$k.rsa.pub" 2>/dev/null
done
: >"$apk/tmp/APKINDEX"
for p in "busybox 1.36.1-r29 x86_64" "musl 1.2.5-r0 x86_64" "alpine-baselayout 3.6.5-r0 x86_64" "ca-certificates-bundle 20240705-r0 noarch"; do
  set -- $p
  rm -rf "$apk/tmp/ctl" && mkdir -p "$apk/tmp/ctl"
  printf 'pkgname = %s\npkgver = %s\narch = %s\nsize = 1024\n' "$1" "$2" "$3" >"$apk/tmp/ctl/.PKGINFO"
  tar -c --format=ustar --owner=0 --group=0 --numeric-owner --mtime=@0 -f - -C "$apk/tmp/ctl" .PKGINFO | gzip -9n >"$apk/pkgs/$1-$2.control.tar.gz"
  c=$(openssl dgst -sha1 -binary "$apk/pkgs/$1-$2.control.tar.gz" | base64)
  printf 'C:Q1%s\nP:%s\nV:%s\nA:%s\nS:1024\nI:4096\nT:%s package\nU:https://alpinelinux.org\nL:MIT\no:%s\nm:Vmkit <vmkit@example.org>\nt:1700000000\n\n' "$c" "$1" "$2" "$3" "$1" "$1" >>"$apk/tmp/APKINDEX"
done
echo "v3.20-vmkit-fixture" >"$apk/tmp/DESCRIPTION"
tar -c --format=ustar --owner=0 --group=0 --numeric-owner --mtime=@0 -f - -C "$apk/tmp" DESCRIPTION APKINDEX | gzip -9n >"$apk/tmp/index.tar.gz"
for v in "x86_64 RSA sha1" "x86_64-256 RSA256 sha256"; do
  set -- $v
  mkdir -p "$apk/$1"
  sig=".SIGN.$2.vmkit-test.rsa.pub"
  openssl dgst -"$3" -sign "$apk/vmkit-test.rsa" -out "$apk/tmp/$sig" "$apk/tmp/index.tar.gz"
  tar -c --format=ustar --owner=0 --group=0 --numeric-owner --mtime=@0 -f - -C "$apk/tmp" "$sig" | head -c 1024 | gzip -9n >"$apk/tmp/sig.tar.gz"
  cat "$apk/tmp/sig.tar.gz" "$apk/tmp/index.tar.gz" >"$apk/$1/APKINDEX.tar.gz"
  rm "$apk/tmp/$sig"
done
rm -rf "$apk/tmp"

echo "$want" >"$stamp"
echo "attest fixtures in $out"
