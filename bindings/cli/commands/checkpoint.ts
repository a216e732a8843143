/**
 * `vmkit checkpoint save|restore|inspect|read-page`: guest memory images to
 * and from vmkit checkpoints (docs/checkpoint-format.md).
 * @module
 */
import { closeSync, existsSync, ftruncateSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { VmkitError } from '../../errors.js';
import { CheckpointReader } from '../../memory/checkpoint/reader.js';
import type { CheckpointStats } from '../../memory/checkpoint/writer.js';
import { isHttpUrl, type HttpSourceOptions } from '../../memory/checkpoint/http.js';
import { emit, formatBytes, parse, parseSize, parseU64, Progress, type CliIO, type Command } from '../_common.js';

// Each subcommand loads what only it uses (the writer, the page store, the QEMU stream codecs: 17 of
// the group's 33 modules, ~10 ms of a whole-process `checkpoint restore` quiet): start-up is module
// loading (cli/main.ts).
const writerMod = (): Promise<typeof import('../../memory/checkpoint/writer.js')> => import('../../memory/checkpoint/writer.js');
const storeMod = (): Promise<typeof import('../../memory/checkpoint/store.js')> => import('../../memory/checkpoint/store.js');
const rawImageMod = (): Promise<typeof import('./_raw_image.js')> => import('./_raw_image.js');
const qemuMod = (): Promise<typeof import('./_checkpoint_qemu.js')> => import('./_checkpoint_qemu.js');
const partsMod = (): Promise<typeof import('../../memory/checkpoint/remote-parts.js')> => import('../../memory/checkpoint/remote-parts.js');

const PS = 4096;
const WINDOW = 4 << 20;

/**
 * Opens a checkpoint file or URL; a URL that holds a parts manifest (what
 * `save <image> <url>` uploads) rather than a checkpoint is read through its parts.
 */
async function openCheckpoint(target: string, http: HttpSourceOptions = {}): Promise<CheckpointReader> {
  if (!isHttpUrl(target)) return CheckpointReader.open(target);
  try {
    return await CheckpointReader.open(target, { http });
  } catch (e) {
    if (!(e instanceof VmkitError && e.code === 'CORRUPT')) throw e;
    let src;
    try {
      src = await (await partsMod()).httpPartsSource(target);
    } catch {
      throw e; // neither a checkpoint nor a manifest: the reader's error says why
    }
    return CheckpointReader.open(src);
  }
}

/** As `vmkit disk backup`: an existing output is CONFLICT unless --force. */
function refuseOverwrite(path: string, force: unknown): void {
  if (force !== true && existsSync(path)) throw new VmkitError('CONFLICT', `${path} exists; pass --force to overwrite it`, { path });
}

async function storeSave(dir: string, argv: string[], json: boolean, io: CliIO): Promise<number> {
  const [image, name] = argv;
  if (!image || !name || argv.length > 2) throw new VmkitError('ARG_RANGE', 'save --store needs <memory-image> <name>');
  const [{ _imagePages }, { PageStore }] = await Promise.all([rawImageMod(), storeMod()]);
  const src = _imagePages(image, PS);
  const started = performance.now();
  try {
    const store = await PageStore.open(dir, { create: true });
    const st = await store.save(name, src);
    const seconds = (performance.now() - started) / 1000;
    emit(io, json, { store: dir, name, image, ...st, seconds }, () =>
      `saved ${image} as ${name} in ${dir}: ${st.newFrames} new / ${st.sharedFrames} shared / ${st.zeroFrames} zero frames of ${st.frames}, ${formatBytes(st.bytesWritten)} written`,
    );
  } finally {
    src.close();
  }
  return 0;
}

async function save(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {
    store: { type: 'string' },
    'block-size': { type: 'string' },
    codec: { type: 'string' },
    parent: { type: 'string' },
    dirty: { type: 'string' },
    threads: { type: 'string' },
    force: { type: 'boolean' },
  });
  if (values.store !== undefined) return storeSave(values.store as string, positionals, values.json === true, io);
  const [image, out] = positionals;
  if (!image || !out || positionals.length > 2) throw new VmkitError('ARG_RANGE', 'save needs <memory-image> <checkpoint>');
  if (values.dirty && !values.parent) throw new VmkitError('ARG_RANGE', '--dirty needs --parent');
  const blockSize = values['block-size'] === undefined ? undefined : parseSize(values['block-size'] as string, '--block-size');
  const codec = (values.codec as string | undefined) ?? 'lz4';
  if (codec !== 'lz4' && codec !== 'none') throw new VmkitError('ARG_RANGE', `--codec must be lz4 or none, got ${codec}`);
  const threads = values.threads === undefined ? 1 : Number(values.threads);
  if (!Number.isInteger(threads) || threads < 1 || threads > 64) throw new VmkitError('ARG_RANGE', `--threads must be 1..64, got ${String(values.threads)}`);
  if (threads > 1 && values.parent) throw new VmkitError('ARG_RANGE', '--threads applies to full saves (not with --parent)');
  const remote = isHttpUrl(out);
  if (remote && values.parent) throw new VmkitError('ARG_RANGE', '--parent needs a local <checkpoint> (the reader finds a parent by its path)');
  if (!remote) refuseOverwrite(out, values.force); // after the usage checks: a usage error is reported as one
  const [{ _imagePages }, { CheckpointWriter }] = await Promise.all([rawImageMod(), writerMod()]);
  const src = _imagePages(image, PS);
  const started = performance.now();
  let parent: CheckpointReader | undefined;
  let stats: CheckpointStats;
  try {
    if (values.parent) {
      parent = await CheckpointReader.open(values.parent as string);
      if (parent.guestSize !== BigInt(src.size)) {
        throw new VmkitError('ARG_RANGE', `parent is a ${parent.guestSize}-byte guest, the image has ${src.size} bytes`);
      }
    }
    // The reader resolves a relative parent path against the child's directory.
    const parentRef = parent
      ? { path: relative(dirname(resolve(out)), resolve(values.parent as string)) || '.', id: parent.header.id }
      : undefined;
    // A URL: parts uploaded with PUT while the save runs, then the manifest (remote-parts.ts).
    const w = await CheckpointWriter.create(remote ? (await partsMod()).httpPartsSink(out) : out, { guestSize: src.size, blockSize, codec, parent: parentRef });
    const bar = new Progress(io, 'save', src.size, !values.json);
    try {
      if (threads > 1) {
        const { writeImageParallel } = await import('../../memory/checkpoint/parallel.js');
        await writeImageParallel(w, image, { threads, onProgress: (d) => bar.update(d) });
      } else if (values.dirty) {
        const bitmap = new Uint8Array(readFileSync(values.dirty as string));
        await w.writeDirty(bitmap, src);
      } else {
        const buf = new Uint8Array(WINDOW);
        const old = parent ? new Uint8Array(WINDOW) : undefined;
        for (let p = 0; p < src.pageCount; ) {
          const n = Math.min(WINDOW / PS, src.pageCount - p);
          const view = buf.subarray(0, n * PS);
          if (parent && old) {
            src.readPagesIntoSync(p, n, view);
            // Diff against the parent: only pages that changed.
            parent.readPagesIntoSync(p, n, old.subarray(0, n * PS));
            for (let i = 0; i < n; ) {
              if (samePage(view, old, i)) {
                i++;
                continue;
              }
              let j = i + 1;
              while (j < n && !samePage(view, old, j)) j++;
              await w.writePages(p + i, view.subarray(i * PS, j * PS));
              i = j;
            }
          } else {
            // Read straight into the writer's window in core memory.
            await w.writePagesFromSync(p, n, (f, c, dst) => src.readPagesIntoSync(f, c, dst));
          }
          p += n;
          bar.update(p * PS);
        }
      }
      stats = await w.finish();
    } catch (e) {
      await w.abort();
      throw e;
    } finally {
      bar.done();
    }
  } finally {
    src.close();
    await parent?.close();
  }
  const seconds = (performance.now() - started) / 1000;
  const result = { checkpoint: out, image, ...stats, seconds, bytesPerSecond: src.size / seconds, ratio: stats.fileBytes / src.size };
  emit(io, values.json, result, () =>
    `saved ${image} (${formatBytes(src.size)}) to ${out}: ${formatBytes(stats.fileBytes)} (${(result.ratio * 100).toFixed(1)}%), ` +
    `${stats.blocks} blocks in ${stats.writes} writes, ${stats.zeroPages} zero / ${stats.lz4Pages} lz4 / ${stats.rawPages} raw` +
    (stats.absentPages ? ` / ${stats.absentPages} in parent` : '') +
    ` pages, ${formatBytes(result.bytesPerSecond)}/s`,
  );
  return 0;
}

function samePage(a: Uint8Array, b: Uint8Array, i: number): boolean {
  const x = new BigUint64Array(a.buffer, a.byteOffset + i * PS, PS / 8);
  const y = new BigUint64Array(b.buffer, b.byteOffset + i * PS, PS / 8);
  for (let k = 0; k < x.length; k++) if (x[k] !== y[k]) return false;
  return true;
}

async function storeRestore(dir: string, name: string, image: string, json: boolean, io: CliIO): Promise<number> {
  const { PageStore } = await storeMod();
  const store = await PageStore.open(dir);
  const ck = await store.openCheckpoint(name);
  const fd = openSync(image, 'w');
  try {
    ftruncateSync(fd, Number(ck.guestSize));
    const buf = new Uint8Array(WINDOW);
    for (let p = 0; p < ck.pageCount; ) {
      const n = Math.min(WINDOW / PS, ck.pageCount - p);
      const v = buf.subarray(0, n * PS);
      await ck.readPagesInto(p, n, v);
      // Zero windows stay holes of the file truncated to size.
      if (v.some((x) => x !== 0)) writeSync(fd, v, 0, v.length, p * PS);
      p += n;
    }
  } finally {
    closeSync(fd);
  }
  emit(io, json, { store: dir, name, image, guestSize: Number(ck.guestSize) }, () => `restored ${name} from ${dir} to ${image} (${formatBytes(Number(ck.guestSize))})`);
  return 0;
}

async function gc(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { store: { type: 'string' } });
  if (values.store === undefined || positionals.length > 0) throw new VmkitError('ARG_RANGE', 'gc needs --store <dir|url>');
  const { PageStore } = await storeMod();
  const store = await PageStore.open(values.store as string);
  const st = await store.gc();
  emit(io, values.json, { store: values.store, ...st }, () => `gc ${values.store}: ${st.removed} frame objects removed, ${st.kept} kept`);
  return 0;
}

/** The options every reading subcommand takes for an http(s) <checkpoint>. */
const REMOTE_OPTS = { 'cache-dir': { type: 'string' }, 'cache-max': { type: 'string' }, sigv4: { type: 'boolean' } } as const;

/**
 * The remote reader's options from `--cache-dir`, `--cache-max` and
 * `--sigv4` (credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
 * AWS_SESSION_TOKEN and AWS_REGION or AWS_DEFAULT_REGION).
 */
function remoteOptions(values: Record<string, unknown>): HttpSourceOptions {
  const o: HttpSourceOptions = {};
  if (values['cache-max'] !== undefined && values['cache-dir'] === undefined) throw new VmkitError('ARG_RANGE', '--cache-max needs --cache-dir');
  if (typeof values['cache-dir'] === 'string') {
    o.localCache = { dir: values['cache-dir'] };
    if (typeof values['cache-max'] === 'string') o.localCache.maxBytes = parseSize(values['cache-max'], '--cache-max');
  }
  if (values.sigv4 === true) {
    const env = process.env;
    if (!env.AWS_ACCESS_KEY_ID || !env.AWS_SECRET_ACCESS_KEY) throw new VmkitError('ARG_RANGE', '--sigv4 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment');
    o.sigv4 = { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY };
    if (env.AWS_SESSION_TOKEN) o.sigv4.sessionToken = env.AWS_SESSION_TOKEN;
    const region = env.AWS_REGION || env.AWS_DEFAULT_REGION;
    if (region) o.sigv4.region = region;
  }
  return o;
}

async function restore(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { force: { type: 'boolean' }, store: { type: 'string' }, ...REMOTE_OPTS });
  const [ckpt, image] = positionals;
  if (!ckpt || !image || positionals.length > 2) throw new VmkitError('ARG_RANGE', 'restore needs <checkpoint> <memory-image>');
  refuseOverwrite(image, values.force);
  if (values.store !== undefined) return storeRestore(values.store as string, ckpt, image, values.json === true, io);
  const started = performance.now();
  const r = await openCheckpoint(ckpt, remoteOptions(values));
  const size = Number(r.guestSize);
  const bar = new Progress(io, 'restore', size, !values.json);
  try {
    await r.restoreTo(image, { onProgress: (d) => bar.update(d) });
  } finally {
    bar.done();
    await r.close();
  }
  const seconds = (performance.now() - started) / 1000;
  const st = r.stats;
  emit(io, values.json, { checkpoint: ckpt, image, guestSize: size, ...st, seconds, bytesPerSecond: size / seconds }, () =>
    `restored ${ckpt} to ${image}: ${formatBytes(size)} from ${st.blockReads} block reads, ${formatBytes(size / seconds)}/s`,
  );
  return 0;
}

async function inspect(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { ...REMOTE_OPTS });
  const [ckpt] = positionals;
  if (!ckpt || positionals.length > 1) throw new VmkitError('ARG_RANGE', 'inspect needs <checkpoint>');
  const r = await openCheckpoint(ckpt, remoteOptions(values));
  const i = r.info();
  await r.close();
  emit(io, values.json, { checkpoint: ckpt, ...i }, () =>
    [
      `${ckpt}: vmkit checkpoint v${i.version} ${i.id}${i.diff ? `, diff of ${i.parentPath} (${i.parentId})` : ''}`,
      `guest ${formatBytes(Number(i.guestSize))} in ${i.pages} pages of ${i.pageSize} bytes`,
      `pages: ${i.zeroPages} zero, ${i.storedPages} stored (${i.lz4Pages} lz4, ${i.rawPages} raw), ${i.absentPages} in parent`,
      `blocks: ${i.blocks} (block size ${formatBytes(i.blockSize)}, ${i.blockWrites} block writes), codec ${i.codec}`,
      `file: ${formatBytes(i.fileBytes)} (${i.fileBytes} bytes; ${formatBytes(i.storedBytes)} stored data, ${formatBytes(i.indexBytes)} index)`,
      `chain: ${i.chain.join(' → ')}`,
    ].join('\n'),
  );
  return 0;
}

async function readPage(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { out: { type: 'string', short: 'o' }, force: { type: 'boolean' }, ...REMOTE_OPTS });
  const [ckpt, addr] = positionals;
  if (!ckpt || positionals.length !== 2) throw new VmkitError('ARG_RANGE', 'read-page needs <checkpoint> <gpa>');
  const gpa = parseU64(addr, '<gpa>');
  const out = typeof values.out === 'string' ? values.out : undefined;
  // Raw bytes on a terminal garble it (and can drive its escape sequences): refuse before any work.
  if (!values.json && out === undefined && io.stdout.isTTY) {
    throw new VmkitError('ARG_RANGE', 'read-page writes binary: give -o <file>, redirect stdout, or pass --json');
  }
  if (out !== undefined) refuseOverwrite(out, values.force);
  const r = await openCheckpoint(ckpt, remoteOptions(values));
  try {
    if (gpa >= r.guestSize) throw new VmkitError('ARG_RANGE', `gpa 0x${gpa.toString(16)} is past the guest's ${r.guestSize} bytes`);
    const pageNo = Number(gpa / BigInt(r.pageSize));
    const page = await r.readPage(pageNo);
    if (values.json) {
      emit(io, true, { checkpoint: ckpt, gpa: `0x${gpa.toString(16)}`, page: pageNo, pageSize: r.pageSize, hex: Buffer.from(page).toString('hex') }, () => '');
    } else if (out !== undefined) {
      writeFileSync(out, page);
    } else {
      await new Promise<void>((res, rej) => io.stdout.write(page, (e) => (e ? rej(e) : res())));
    }
  } finally {
    await r.close();
  }
  return 0;
}

/**
 * The `checkpoint` command group (help: help/checkpoint.ts).
 * @example
 * ```ts
 * process.exitCode = await command.run.inspect!(['vm.ckpt', '--json'], process);
 * ```
 */
export const command: Command = {
  run: {
    save,
    restore,
    inspect,
    'read-page': readPage,
    gc,
    import: async (argv, io) => (await qemuMod())._importCmd(argv, io),
    export: async (argv, io) => (await qemuMod())._exportCmd(argv, io),
  },
};
