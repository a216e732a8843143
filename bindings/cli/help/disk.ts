/**
 * Help of `vmkit disk …` (no imports beyond types: `--help` loads nothing else).
 * @module
 */
import { EXITS, JSON_OPTION, type CommandHelp } from '../_common.js';

const FORMAT: readonly [string, string] = ['-f, --format qcow2|vmdk|vhd|vhdx|raw', 'the format of <disk> (default: probed from its header); as qemu-img -f'];
const BACKING_FORMAT: readonly [string, string] = [
  '-F, --backing-format qcow2|vmdk|vhd|vhdx|raw',
  "the format of <disk>'s backing file when its header records none (vmkit never probes a backing file as raw)",
];
const OWNER_STORE: readonly (readonly [string, string])[] = [
  ['--etcd <urls>', 'keep the owner record in etcd (comma-separated client URLs) instead of <disk>.owner/'],
  ['--name <key>', "the disk's key in the store (default: the path as typed; give every host the same)"],
];
const OWNER_EXITS: readonly (readonly [number, string])[] = [[0, 'ok'], [1, 'failure (refused, unreachable, fenced)'], [2, 'usage error']];

/**
 * The `disk` group's help.
 * @example
 * ```ts
 * console.log(help.subcommands.check!.synopsis);
 * ```
 */
export const help: CommandHelp = {
  summary: 'virtual disks: create, info, map, check, convert; snapshot, backup, consolidate; serve over NBD; ownership',
  about: `Images are qcow2, VMDK (monolithicSparse, streamOptimized, flat/split descriptors), VHD, VHDX or raw; backing chains are followed, each backing file
opened with the format its overlay records. Sizes take K/M/G/T suffixes (powers of 1024).
A chain's active layer is its top file: after \`vmkit disk snapshot vm.qcow2\` the guest writes to the
delta it prints (vm-delta-1.qcow2), vm.qcow2 is the frozen point in time that \`disk backup vm.qcow2\`
copies, and \`disk consolidate vm-delta-1.qcow2\` folds the delta back into vm.qcow2 (as qemu-img commit).`,
  subcommands: {
    create: {
      summary: 'create an image (an overlay with --backing)',
      synopsis: '<file> --size <bytes> [-f qcow2|vmdk|vhd|vhdx|raw] [-b <file> [-F <fmt>]] [--cluster-size <bytes>] [--extended-l2] [--data-file <file> [--data-file-raw]] [--compression-type zlib|zstd] [--json]',
      options: [
        ['--size <bytes>', 'virtual size (required without --backing, which gives its size)'],
        ['-f, --format qcow2|vmdk|vhd|vhdx|raw', 'format of the new image (default qcow2); as qemu-img create -f'],
        ['-b, --backing <file>', 'backing file, relative to the new image (as qemu-img create -b)'],
        ['-F, --backing-format qcow2|vmdk|vhd|vhdx|raw', 'format of the backing file, recorded in the new image (default: probed, then recorded)'],
        ['--cluster-size <bytes>', 'qcow2 cluster / VMDK grain size'],
        ['--extended-l2', 'qcow2: extended L2 entries (32 subclusters per cluster)'],
        ['--data-file <file>', 'qcow2: keep the guest data in this file beside the image (as qemu-img -o data_file=)'],
        ['--data-file-raw', 'qcow2: the data file stays a raw image of the disk (as -o data_file_raw=on)'],
        ['--compression-type zlib|zstd', 'qcow2: how compressed clusters are compressed (as -o compression_type=)'],
        JSON_OPTION,
      ],
      example: 'vmkit disk create vm.qcow2 --size 10G',
      exits: EXITS,
    },
    convert: {
      summary: 'copy an image (through its chain) into a new one of any format, as qemu-img convert',
      synopsis: '<in> <out> [-O qcow2|vmdk|vhd|vhdx|raw] [--subformat streamOptimized|monolithicFlat|twoGbMaxExtentSparse|…|fixed|dynamic] [--cluster-size <bytes>] [--in-flight <n>] [-t writeback|unsafe] [--json]',
      options: [
        ['-O, --output-format <fmt>', 'format of <out> (default qcow2)'],
        ['--subformat <name>', 'vmdk: monolithicSparse (default), streamOptimized (an OVA disk), monolithicFlat, twoGbMaxExtentFlat or twoGbMaxExtentSparse (a descriptor and extent files beside it, as qemu-img -o subformat=); vhd, vhdx: dynamic (default) or fixed'],
        ['--cluster-size <bytes>', 'cluster / grain / block size of <out>'],
        ['--in-flight <n>', 'chunks of 1 MiB read at once, 1 to 64 (default 8, as qemu-img -m 8)'],
        ['-t, --cache writeback|unsafe', 'writeback (default): <out> is durable when convert returns; unsafe (qemu-img\'s default): flushes are skipped'],
        JSON_OPTION,
      ],
      example: 'vmkit disk convert vm.qcow2 disk1.vmdk -O vmdk --subformat streamOptimized',
      exits: EXITS,
    },
    info: {
      summary: 'format, virtual size, backing chain, allocated bytes',
      synopsis: '<file> [-f <fmt>] [-F <fmt>] [--json]',
      options: [FORMAT, BACKING_FORMAT, JSON_OPTION],
      example: 'vmkit disk info vm.qcow2 --json',
      exits: EXITS,
    },
    map: {
      summary: 'extents (data/zero/depth/host offset), as qemu-img map',
      synopsis: '<file> [-f <fmt>] [-F <fmt>] [--json]',
      about: 'With --json (or --output=json) the list is what `qemu-img map --output=json` prints for the same image.',
      options: [FORMAT, BACKING_FORMAT, JSON_OPTION],
      example: 'vmkit disk map vm.qcow2 --output=json',
      exits: EXITS,
    },
    check: {
      summary: "metadata check of one image, with qemu-img check's exit codes and JSON keys",
      synopsis: '<file> [-f <fmt>] [--repair-leaks] [--json]',
      about: `Checks the image's own metadata (not its backing chain). --json prints the keys qemu-img check
--output=json prints (filename, format, check-errors, corruptions, leaks, image-end-offset, …).`,
      options: [FORMAT, ['-r, --repair-leaks', 'free leaked clusters (as qemu-img check -r leaks)'], JSON_OPTION],
      example: 'vmkit disk check vm.qcow2 --output=json',
      exits: [
        [0, 'no errors (or every leak repaired)'],
        [1, 'the check itself failed (unreadable file, bad option value)'],
        [2, 'corruptions found'],
        [3, 'leaked clusters found, no corruption'],
        [63, 'the format has no check (raw)'],
      ],
    },
    snapshot: {
      summary: 'freeze the active layer; stack a new delta on it and print its name',
      synopsis: '<disk> [--delta <path>] [-f <fmt>] [--delta-format qcow2|vmdk] [--json]',
      about: `Prints the new active layer (the delta) on stdout: the guest writes there from now on; <disk> is the
frozen point in time to back up, and the delta is what \`vmkit disk consolidate\` takes.`,
      options: [
        ['--delta <path>', 'the new delta (default <stem>-delta-<n>.<ext> beside <disk>, first free n)'],
        FORMAT,
        ['--delta-format qcow2|vmdk', 'format of the delta (default qcow2)'],
        ['--server <socket>', 'run inside the `vmkit disk serve --control <socket>` process that owns the disk (no <disk> then)'],
        JSON_OPTION,
      ],
      example: 'active=$(vmkit disk snapshot vm.qcow2)',
      exits: EXITS,
    },
    backup: {
      summary: 'copy a disk (through its chain) to a new image, or to stdout as raw',
      synopsis: '<disk> <target|-> [-f <fmt>] [-F <fmt>] [-O raw|qcow2] [--scope full|top] [--backing <prev>] [--rate <bytes/s>] [--json]',
      about: `"-" as the target streams the raw image to standard output. An existing target is refused (remove it first).
A TTY shows bytes copied, the rate and the time left.`,
      options: [
        FORMAT,
        BACKING_FORMAT,
        ['-O, --output-format raw|qcow2', 'format of the target (default raw); as qemu-img convert -O'],
        ['--scope full|top', 'full: the whole chain; top: only what the top layer holds (an incremental)'],
        ['--backing <prev>', 'with --scope top -O qcow2: the previous backup the target backs onto'],
        ['--rate <bytes/s>', 'limit the copy rate (K/M/G suffixes)'],
        ['--server <socket>', 'back up the last snapshot taken inside the `vmkit disk serve --control <socket>` process (no <disk> then)'],
        JSON_OPTION,
      ],
      example: 'vmkit disk backup vm.qcow2 backup.raw',
      exits: EXITS,
    },
    consolidate: {
      summary: 'fold a delta into the layer below (or onto a new image), crash-safe',
      synopsis: '<delta> [-f <fmt>] [-F <fmt>] [--into base|<target>] [--full] [--keep-delta] [--rate <bytes/s>] [--resume|--rollback] [--json]',
      about: `<delta> is the chain's active layer (what \`vmkit disk snapshot\` printed). An interrupted job is finished
with --resume or undone with --rollback. A TTY shows bytes copied, the rate and the time left.`,
      options: [
        FORMAT,
        BACKING_FORMAT,
        ['--into base|<target>', 'base (default): into the layer below, as qemu-img commit; or onto a new image <target>'],
        ['--full', 'with a <target>: the target holds the whole chain, no backing file'],
        ['--keep-delta', 'into base: leave the delta in the chain, emptied (qemu-img commit without -d)'],
        ['--rate <bytes/s>', 'limit the copy rate (K/M/G suffixes)'],
        ['--resume', 'finish an interrupted consolidation'],
        ['--rollback', 'undo an interrupted consolidation (before its pivot)'],
        ['--server <socket>', 'consolidate inside the `vmkit disk serve --control <socket>` process while its clients write (no <delta> then)'],
        JSON_OPTION,
      ],
      example: 'vmkit disk consolidate vm-delta-1.qcow2',
      exits: EXITS,
    },
    serve: {
      summary: 'serve the image over NBD until SIGINT/SIGTERM, as qemu-nbd',
      synopsis: '<file> [--listen <addr>] [-x <export>] [-r] [-f <fmt>] [-F <fmt>] [--tls-creds <dir>] [--cache <mode>] [--aio <mode>] [--control <path>] [--as <id> …] [--json]',
      about: `Serves the image (qcow2 chain, VMDK or raw) over NBD; in-flight requests finish and the image is
flushed and closed on the way out. A QEMU guest uses it with
  -drive driver=nbd,server.type=unix,server.path=/tmp/vm.sock,export=vm,if=virtio`,
      options: [
        ['--listen <addr>', 'unix:<path>, a path, or <host>:<port> (default 127.0.0.1:10809; port 0 picks one)'],
        ['-x, --export <name>', "export name (default ''; a client naming none gets the only export)"],
        ['--description <text>', 'shown by nbdinfo --list'],
        ['-r, --read-only', 'serve read-only (writes fail with EPERM)'],
        FORMAT,
        [BACKING_FORMAT[0], `${BACKING_FORMAT[1]}; not with --control`],
        ['--tls-creds <dir>', 'TLS with a QEMU tls-creds-x509 directory (server-cert.pem, server-key.pem, and ca-cert.pem when clients must present certificates): clients must STARTTLS'],
        ['--insecure', 'allow a non-loopback TCP address without TLS'],
        ['--max-connections <n>', 'connections served at once (default 16)'],
        ['--cache writeback|writethrough', 'writeback (default, as qemu-nbd: qcow2 metadata reaches the file on FLUSH) or after every request'],
        ['--aio threads|sync', "threads (default: file I/O on libuv's thread pool) or sync (blocking I/O on the main thread: less overhead when the image is cached, but a slow read stalls every connection)"],
        ['--control <path>', 'a control socket (mode 0600): vmkit disk snapshot|backup|consolidate --server <path> run inside this process while clients keep writing; a job that moves the active layer records it in <file>.vmkit-active, which a writable serve of <file> follows'],
        ['--as <id>', 'take the disk as its owner first (docs/ownership.md); a release request cancels a running backup or consolidation (a pivot under way finishes), stops the server, flushes and releases the disk; with --control every file a job writes goes through the owner\'s fence'],
        ['--release-listen <host:port>', 'where release requests are answered (default 127.0.0.1:0; plain HTTP: off loopback needs --insecure)'],
        ['--etcd <urls>', 'with --as: keep the owner record in etcd (default the <disk>.owner sidecar)'],
        ['--name <key>', "with --as: the disk's key in the owner store (default the path)"],
        ['--lease <ms>', 'with --as: ownership lease (default 10000)'],
        ['--json, --output=json', 'print the listening address and URI as JSON'],
      ],
      example: 'vmkit disk serve vm.qcow2 --listen unix:/tmp/vm.sock -x vm &',
      exits: [[0, 'stopped by a signal after a clean shutdown'], [1, 'failure'], [2, 'usage error']],
    },
    owner: {
      summary: 'the owner record: epoch, state, holder, lease',
      synopsis: '<disk> [--etcd <urls>] [--name <key>] [--json]',
      options: [...OWNER_STORE, JSON_OPTION],
      example: 'vmkit disk owner vm.qcow2 --json',
      exits: OWNER_EXITS,
    },
    open: {
      summary: 'take the disk (its owner is asked to release it) and hold it until released',
      synopsis: '<disk> --as <id> [--serve <host:port>] [--tls-cert <pem> --tls-key <pem> | --insecure] [--lease <ms>] [--wait <ms>] [-f <fmt>] [--etcd <urls>] [--name <key>] [--json]',
      about: 'Answers release requests at the printed endpoint; exits 0 once released (to a request, or on SIGINT/SIGTERM), 1 if fenced.',
      options: [
        ['--as <id>', 'who holds the disk (required)'],
        ['--serve <host:port>', 'where to answer release requests (default 127.0.0.1:0)'],
        ['--tls-cert <pem>, --tls-key <pem>', 'answer release requests over HTTPS (needed on an address other hosts can reach)'],
        ['--insecure', 'allow plain HTTP off loopback (release requests carry an HMAC made with the disk\'s secret either way)'],
        ['--lease <ms>', 'lease length, renewed while held'],
        ['--wait <ms>', "how long to wait for the current owner's release"],
        FORMAT,
        ...OWNER_STORE,
        JSON_OPTION,
      ],
      example: 'vmkit disk open vm.qcow2 --as vm-17 --serve 127.0.0.1:7070',
      exits: [[0, 'held, then released'], [1, 'fenced, refused or unreachable'], [2, 'usage error']],
    },
    release: {
      summary: 'ask the current owner to let go; the disk ends free',
      synopsis: '<disk> [--as <id>] [--etcd <urls>] [--name <key>] [--json]',
      options: [['--as <id>', 'who asks (default vmkit-cli)'], ...OWNER_STORE, JSON_OPTION],
      example: 'vmkit disk release vm.qcow2',
      exits: OWNER_EXITS,
    },
  },
};
