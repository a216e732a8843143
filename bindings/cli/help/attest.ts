/**
 * Help of `vmkit attest …` (no imports beyond types: `--help` loads nothing else).
 * @module
 */
import { JSON_OPTION, type CommandHelp } from '../_common.js';

const SOURCES: readonly (readonly [string, string])[] = [
  ['--repo <source>, --source <source>', 'a package source, written as its ecosystem writes it (repeatable; see below)'],
  ['--keyring <file>', 'binary or armored OpenPGP keyring (/usr/share/keyrings/*.gpg; repeatable)'],
  ['--apk-key <file>', 'RSA public key (PEM) an Alpine index may be signed with, named as in /etc/apk/keys (repeatable)'],
  ['--allow-unsigned', 'accept sources without a signature'],
  ['--allow-expired', 'accept a signed release past its Valid-Until'],
  ['--files-of <package>', "load the file-level digests of this package (APT: its .deb fetched and checked; repeatable)"],
];
const EVIDENCE: readonly (readonly [string, string])[] = [
  ['--digest alg:hex', 'a digest to appraise (repeatable)'],
  ['--package name=version', 'an installed package to appraise (repeatable)'],
  ['--ima <log>', 'an IMA measurement log (ascii_runtime_measurements)'],
  ['--pcr10 bank:hex', "with --ima: the TPM's PCR 10, to check the log replays to it"],
  ['--exclude <glob>', 'with --ima: paths left out of the appraisal (repeatable)'],
];
const APPRAISAL_EXITS: readonly (readonly [number, string])[] = [[0, 'affirming'], [1, 'not affirming (warning, contraindicated) or failure'], [2, 'usage error']];
const OK_EXITS: readonly (readonly [number, string])[] = [[0, 'ok'], [1, 'failure'], [2, 'usage error']];

/**
 * The `attest` group's help.
 * @example
 * ```ts
 * console.log(help.subcommands.serve!.synopsis);
 * ```
 */
export const help: CommandHelp = {
  summary: 'attestation against package repositories: keygen, serve, request, verify, check, index',
  about: `A <source> is written the way its ecosystem writes it:
  "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://host/debian bookworm main"
  "rpm http://host/repo"          "npm https://registry.npmjs.org <package>..."
  "apk https://dl-cdn.alpinelinux.org/alpine/v3.20/main/x86_64"`,
  subcommands: {
    keygen: {
      summary: 'make the Ed25519 signing key `attest serve --key` takes (PKCS#8 PEM) and its public JWKS',
      synopsis: '<key.pem> [--jwks <file>] [--force] [--json]',
      about: 'The key file is written with mode 0600; relying parties verify tokens with the JWKS (also served at /.well-known/jwks.json).',
      options: [['--jwks <file>', 'also write the public key set there'], ['--force', 'overwrite existing files'], JSON_OPTION],
      example: 'vmkit attest keygen ear.pem --jwks ear.jwks.json',
      exits: OK_EXITS,
    },
    serve: {
      summary: 'the attestation service: index the sources, answer requests with signed EARs',
      synopsis: "--repo '<source>'... [--keyring <file>]... [--key <file>] [--listen host:port | --port N] [--files-of <pkg>]... [--verifier-id <id>] [--refresh <s>] [--state-dir <dir>] [--max-future-skew <s>] [--nonce-secret-file <file> [--nonce-etcd <urls>]] [--cache-dir <dir>] [--max-downloads N] [--unowned warning|ignore] [--ignore glob:<pattern>]... [--json]",
      about: 'Runs until SIGINT/SIGTERM. Without --key, a key made for the life of the process signs the tokens.',
      options: [
        ...SOURCES,
        ['--key <file>', 'Ed25519 signing key, PKCS#8 PEM or private JWK (`vmkit attest keygen` makes one)'],
        ['--listen host:port', 'where to listen (default 127.0.0.1:8080)'],
        ['--port N', 'the port only'],
        ['--verifier-id <id>', "the verifier's name in the tokens"],
        ['--refresh <seconds>', 'how often the sources are re-read (default 300)'],
        ['--state-dir <dir>', "keep each source's last accepted release date there, across restarts (an older release is refused)"],
        ['--max-future-skew <seconds>', 'refuse a release dated further in the future than this'],
        ['--nonce-secret-file <file>', 'the nonce secret (≥ 32 bytes) shared by the replicas behind one load balancer'],
        ['--nonce-etcd <urls>', 'keep used nonces in etcd, so replicas accept each nonce once (needs --nonce-secret-file; repeatable)'],
        ['--cache-dir <dir>', 'whole-machine requests: keep the file digests of fetched packages there, by .deb SHA-256'],
        ['--max-downloads N', 'whole-machine requests: packages fetched at once (default 4)'],
        ['--unowned warning|ignore', 'whole-machine requests: how a file no package lists counts (default warning)'],
        ['--ignore glob:<pattern>', 'whole-machine requests: unowned files under these paths are ignored (repeatable)'],
        JSON_OPTION,
      ],
      example: "vmkit attest serve --repo 'deb http://deb.debian.org/debian bookworm main' --keyring /usr/share/keyrings/debian-archive-keyring.gpg --key ear.pem",
      exits: [[0, 'stopped by a signal'], [1, 'failure (a source did not load, the port is taken)'], [2, 'usage error']],
    },
    request: {
      summary: 'hash files, ask a service, verify the signed result and print it with the token',
      synopsis: '--server <url> [--digest alg:hex]... [--package name=version]... [--ima <log> [--pcr10 bank:hex] [--exclude <glob>]...] [--jwks <url|file>] [--json] [<file>...] | --server <url> --installed [--root <dir>] [--unowned-under <dir>]... [--digest-cache <file>] [--part-bytes N] [--ima <log>] [--pcr10 bank:hex]',
      about: 'Each <file> is hashed (SHA-256). The signature, nonce and expiry of the answer are checked. With --installed, the whole machine: every installed package (the dpkg database, or rpm\'s through `rpmdb --exportdb` on an RPM-based root) and the SHA-256 of each file it lists, sent in parts; with its IMA log (--ima, or the kernel\'s when attesting / and it is readable) each measured file is appraised against its package too, PCR 10 replayed against --pcr10; a summary per category, --json lists every file not affirmed.',
      options: [
        ['--server <url>', 'the service'],
        ...EVIDENCE,
        ['--installed', 'attest the whole machine: installed packages and their files'],
        ['--root <dir>', 'with --installed: the root of the machine (default /)'],
        ['--unowned-under <dir>', 'with --installed: report files no package lists under this directory (repeatable)'],
        ['--digest-cache <file>', 'with --installed: keep digests by file identity (device, inode, size, mtime, ctime) and hash again only files that changed'],
        ['--part-bytes N', 'with --installed: largest part sent at once (default 4 MiB)'],
        ['--ima <log> (with --installed)', 'the IMA log sent beside the evidence (default: /sys/kernel/security/ima/ascii_runtime_measurements when --root is / and it is readable); --pcr10 and --exclude apply to it'],
        ['--jwks <url|file>', "pin the service's public keys (default: fetched from the service)"],
        JSON_OPTION,
      ],
      example: 'vmkit attest request --server http://127.0.0.1:8080 /usr/bin/env',
      exits: APPRAISAL_EXITS,
    },
    verify: {
      summary: 'verify an EAR token (signature, expiry, nonce) and print its status',
      synopsis: '<token> --jwks <url|file> [--nonce <n>] [--json]',
      options: [['--jwks <url|file>', 'the public keys (required)'], ['--nonce <n>', 'the nonce the token must carry'], JSON_OPTION],
      example: 'vmkit attest verify "$token" --jwks ear.jwks.json',
      exits: APPRAISAL_EXITS,
    },
    check: {
      summary: 'appraise local files or evidence against sources, offline (no service)',
      synopsis: "--repo '<source>'... [--keyring <file>]... [--digest alg:hex]... [--package name=version]... [--ima <log>] [--json] [<file>...]",
      options: [...SOURCES, ...EVIDENCE, JSON_OPTION],
      example: "vmkit attest check --repo 'deb http://deb.debian.org/debian bookworm main' --keyring /usr/share/keyrings/debian-archive-keyring.gpg /usr/bin/env",
      exits: APPRAISAL_EXITS,
    },
    index: {
      summary: 'load one source and report its packages and digests',
      synopsis: "'<source>' [--keyring <file>]... [--apk-key <file>]... [--json]",
      options: [...SOURCES, JSON_OPTION],
      example: "vmkit attest index 'rpm http://127.0.0.1:8000/repo' --allow-unsigned",
      exits: OK_EXITS,
    },
  },
};
