// Packages scanner (docs/abi.md, "packages scan"): the paragraphs of a Debian
// Packages file (deb822, docs/attest-sources.md) fed a chunk at a time, the
// fields the digest index needs out as numbers. The host copies the bytes of
// each chunk into the scanner's input buffer and calls pkgsScan; the scanner
// parses every complete line, keeps the partial last one for the next chunk,
// and writes one fixed record per paragraph: where the Package, Version,
// Architecture and Filename values are in its text area, the Size, and the
// SHA256 decoded to 32 bytes. No string is made for a line the index does not
// keep, and the host makes its strings from the kept values alone.
//
//   input  cap bytes        [carried partial line | new chunk ...]
//   records recCap × 48 B   +0 package off, len  +8 version  +16 architecture
//                           (off 0xffffffff: absent)  +24 filename (u32 pairs,
//                           offsets into text)  +32 size f64  +40 paragraph
//                           start (byte offset in the file) f64
//   digests recCap × 32 B   SHA256 of record k at k × 32
//   text   values of the records, and of the paragraph in progress
//
// The rules are those of PackagesParser (bindings/attest/sources/deb822.ts),
// which the specs check this against: lines end in \n (a \r before it is
// dropped); an empty line or one of blanks ends a paragraph; a line starting
// with a blank continues a field (none of the kept fields use it); any other
// line is "Name: value"; Package, Version, Filename, Size and SHA256 are
// required, Architecture optional, none may repeat in a paragraph or be
// empty; Size is at most 15 decimal digits, SHA256 64 hex digits. Limits of
// this scanner only: a line longer than the input buffer, a kept value longer
// than MAX_VALUE (LIMIT). An error records its kind and byte offset
// (pkgsErrorInfo); records before it in the same call are still returned.

import { E_ARG, E_CORRUPT, E_HANDLE, E_LIMIT, E_NO_MEMORY } from "./_errors";
import { tryAlloc } from "./_memory";
import { hexDecode32 } from "./_hex";

// As many as digest index tables: a service refreshing many sources at once runs one (two during a
// prefetch handover) per source.
const MAX_SCANNERS: i32 = 256;
/** Longest kept value (Package, Version, Architecture, Filename), bytes. */
export const PKGS_MAX_VALUE: i32 = 1024;
/** Bytes of one record. */
export const PKGS_RECORD: i32 = 48;
const MIN_INPUT: i32 = 1024;
const MAX_INPUT: i32 = 1 << 24;
const MAX_RECORDS: i32 = 1 << 16;

// Field flags (as PackagesParser's).
const F_PACKAGE: u32 = 1;
const F_VERSION: u32 = 2;
const F_ARCH: u32 = 4;
const F_FILENAME: u32 = 8;
const F_SIZE: u32 = 16;
const F_SHA256: u32 = 32;
const NEED: u32 = F_PACKAGE | F_VERSION | F_FILENAME | F_SIZE | F_SHA256;

// Error kinds (pkgsErrorInfo); the detail is a field flag, or the missing flags.
const K_CONTINUATION: u32 = 1; // continuation line outside a paragraph
const K_NOT_FIELD: u32 = 2; // line is not "Field: value"
const K_REPEATED: u32 = 3; // detail: the field
const K_EMPTY: u32 = 4; // detail: the field
const K_SIZE: u32 = 5; // Size is not a number
const K_SHA256: u32 = 6; // SHA256 is not 64 hex digits
const K_MISSING: u32 = 7; // detail: the required fields missing
const K_VALUE_LONG: u32 = 8; // detail: the field (LIMIT)
const K_LINE_LONG: u32 = 9; // a line longer than the input buffer (LIMIT)

// Per-scanner state, indexed by handle - 1. Live when sIn != 0.
const sIn = new StaticArray<usize>(MAX_SCANNERS);
const sCap = new StaticArray<u32>(MAX_SCANNERS);
const sEnd = new StaticArray<u32>(MAX_SCANNERS); // valid bytes in the input buffer
const sPos = new StaticArray<u32>(MAX_SCANNERS); // next line to parse
const sBase = new StaticArray<u64>(MAX_SCANNERS); // file offset of input byte 0
const sRec = new StaticArray<usize>(MAX_SCANNERS);
const sDig = new StaticArray<usize>(MAX_SCANNERS);
const sRecCap = new StaticArray<u32>(MAX_SCANNERS);
const sNRec = new StaticArray<u32>(MAX_SCANNERS);
const sText = new StaticArray<usize>(MAX_SCANNERS);
const sTextCap = new StaticArray<u32>(MAX_SCANNERS);
const sTextFill = new StaticArray<u32>(MAX_SCANNERS);
const sParaText = new StaticArray<u32>(MAX_SCANNERS); // text of the paragraph in progress starts here
const sInPara = new StaticArray<bool>(MAX_SCANNERS);
const sSeen = new StaticArray<u32>(MAX_SCANNERS);
const sParaStart = new StaticArray<u64>(MAX_SCANNERS);
const sFinal = new StaticArray<bool>(MAX_SCANNERS); // the host said the input ended
const sDone = new StaticArray<bool>(MAX_SCANNERS); // the last paragraph went out
const sErr = new StaticArray<i32>(MAX_SCANNERS); // 0, or the status every later call returns
const sErrKind = new StaticArray<u32>(MAX_SCANNERS);
const sErrDetail = new StaticArray<u32>(MAX_SCANNERS);
const sErrAt = new StaticArray<u64>(MAX_SCANNERS);
// The paragraph in progress: offsets and lengths of its kept values (text area), size, digest.
const sCur = new StaticArray<usize>(MAX_SCANNERS); // 48-byte record + 32-byte digest, unmanaged

@inline
function live(h: i32): bool {
  return h >= 1 && h <= MAX_SCANNERS && unchecked(sIn[h - 1]) != 0;
}

/**
 * Creates a scanner with an input buffer of `inputCap` bytes (1 KiB .. 16 MiB:
 * the longest line it can take) and room for `recordCap` records per call
 * (1 .. 65536). Returns a handle ≥ 1, E_ARG, E_LIMIT (256 live) or E_NO_MEMORY.
 */
export function pkgsCreate(inputCap: i32, recordCap: i32): i32 {
  if (inputCap < MIN_INPUT || inputCap > MAX_INPUT || recordCap < 1 || recordCap > MAX_RECORDS) return E_ARG;
  let h = 0;
  for (let i = 0; i < MAX_SCANNERS; i++) {
    if (unchecked(sIn[i]) == 0) {
      h = i + 1;
      break;
    }
  }
  if (h == 0) return E_LIMIT;
  // Text: the values of every record of a call, and room for one more paragraph's worth.
  const textCap = <usize>recordCap * 96 + 8 * <usize>PKGS_MAX_VALUE;
  // Input buffers are read 16 bytes at a time: 16 bytes of slack past the end.
  const inp = tryAlloc(<usize>inputCap + 16);
  const rec = tryAlloc(<usize>recordCap * <usize>PKGS_RECORD);
  const dig = tryAlloc(<usize>recordCap * 32);
  const text = tryAlloc(textCap);
  const cur = tryAlloc(<usize>PKGS_RECORD + 32);
  if (inp == 0 || rec == 0 || dig == 0 || text == 0 || cur == 0) {
    if (inp) heap.free(inp);
    if (rec) heap.free(rec);
    if (dig) heap.free(dig);
    if (text) heap.free(text);
    if (cur) heap.free(cur);
    return E_NO_MEMORY;
  }
  const i = h - 1;
  unchecked((sIn[i] = inp));
  unchecked((sCap[i] = <u32>inputCap));
  unchecked((sRec[i] = rec));
  unchecked((sDig[i] = dig));
  unchecked((sRecCap[i] = <u32>recordCap));
  unchecked((sText[i] = text));
  unchecked((sTextCap[i] = <u32>textCap));
  unchecked((sCur[i] = cur));
  reset(i);
  return h;
}

function reset(i: i32): void {
  unchecked((sEnd[i] = 0));
  unchecked((sPos[i] = 0));
  unchecked((sBase[i] = 0));
  unchecked((sNRec[i] = 0));
  unchecked((sTextFill[i] = 0));
  unchecked((sParaText[i] = 0));
  unchecked((sInPara[i] = false));
  unchecked((sSeen[i] = 0));
  unchecked((sParaStart[i] = 0));
  unchecked((sFinal[i] = false));
  unchecked((sDone[i] = false));
  unchecked((sErr[i] = 0));
  unchecked((sErrKind[i] = 0));
  unchecked((sErrDetail[i] = 0));
  unchecked((sErrAt[i] = 0));
}

/** Releases a scanner. Returns 0, or E_HANDLE. */
export function pkgsDestroy(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  const i = h - 1;
  heap.free(unchecked(sIn[i]));
  heap.free(unchecked(sRec[i]));
  heap.free(unchecked(sDig[i]));
  heap.free(unchecked(sText[i]));
  heap.free(unchecked(sCur[i]));
  unchecked((sIn[i] = 0));
  return 0;
}

/** Where the host writes the next bytes (the input buffer after what it holds), or 0 for a bad handle. */
export function pkgsInputAt(h: i32): usize {
  if (!live(h)) return 0;
  const i = h - 1;
  return unchecked(sIn[i]) + <usize>unchecked(sEnd[i]);
}

/** Bytes the host may write at pkgsInputAt now, or E_HANDLE. */
export function pkgsInputRoom(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  const i = h - 1;
  return <i32>(unchecked(sCap[i]) - unchecked(sEnd[i]));
}

/** The records (recordCap × 48 bytes), digests (× 32) and text areas; fixed for the scanner's life. 0 for a bad handle. */
export function pkgsRecords(h: i32): usize {
  return live(h) ? unchecked(sRec[h - 1]) : 0;
}
export function pkgsDigests(h: i32): usize {
  return live(h) ? unchecked(sDig[h - 1]) : 0;
}
export function pkgsText(h: i32): usize {
  return live(h) ? unchecked(sText[h - 1]) : 0;
}

/**
 * Writes the error of a failed scanner to `out`: u32 kind, u32 detail, f64 byte
 * offset in the file (16 bytes). Returns the status its calls return (0: none), or E_HANDLE / E_ARG.
 */
export function pkgsErrorInfo(h: i32, out: usize): i32 {
  if (!live(h)) return E_HANDLE;
  if (out == 0) return E_ARG;
  const i = h - 1;
  store<u32>(out, unchecked(sErrKind[i]));
  store<u32>(out, unchecked(sErrDetail[i]), 4);
  store<f64>(out, <f64>unchecked(sErrAt[i]), 8);
  return unchecked(sErr[i]);
}

function fail(i: i32, status: i32, kind: u32, detail: u32, at: u64): void {
  unchecked((sErr[i] = status));
  unchecked((sErrKind[i] = kind));
  unchecked((sErrDetail[i] = detail));
  unchecked((sErrAt[i] = at));
}

// First byte 10 in [p, end), or end. unsafe: 16 readable bytes past end (the input's slack).
@inline
function findEol(p: usize, end: usize): usize {
  if (ASC_FEATURE_SIMD) {
    const nl = i8x16.splat(10);
    while (p < end) {
      const m = i8x16.bitmask(i8x16.eq(v128.load(p), nl));
      if (m != 0) {
        const q = p + <usize>ctz(m);
        return q < end ? q : end;
      }
      p += 16;
    }
    return end;
  }
  while (p < end && load<u8>(p) != 10) p++;
  return p;
}

@inline
function isBlank(c: u32): bool {
  return c == 32 || c == 9;
}

// The kept field named by the bytes [a, a + len), or 0.
@inline
function fieldOf(a: usize, len: usize): u32 {
  const c = <u32>load<u8>(a);
  if (len == 7) {
    // "Package", "Version"
    if (c == 80 && load<u32>(a, 1) == 0x616b6361 && load<u16>(a, 5) == 0x6567) return F_PACKAGE;
    if (c == 86 && load<u32>(a, 1) == 0x69737265 && load<u16>(a, 5) == 0x6e6f) return F_VERSION;
    return 0;
  }
  if (len == 4) return c == 83 && load<u32>(a) == 0x657a6953 ? F_SIZE : 0; // "Size"
  if (len == 6) return c == 83 && load<u32>(a) == 0x32414853 && load<u16>(a, 4) == 0x3635 ? F_SHA256 : 0; // "SHA256"
  if (len == 8) return c == 70 && load<u64>(a) == 0x656d616e656c6946 ? F_FILENAME : 0; // "Filename"
  if (len == 12) return c == 65 && load<u64>(a) == 0x6365746968637241 && load<u32>(a, 8) == 0x65727574 ? F_ARCH : 0; // "Architecture"
  return 0;
}

// Slot of a kept text field in the current record (byte offset of its u32 pair).
@inline
function slotOf(f: u32): usize {
  return f == F_PACKAGE ? 0 : f == F_VERSION ? 8 : f == F_ARCH ? 16 : 24;
}

// Ends the paragraph in progress: its record out (or an error). False on error.
function emit(i: i32): bool {
  const seen = unchecked(sSeen[i]);
  if ((seen & NEED) != NEED) {
    fail(i, E_CORRUPT, K_MISSING, NEED & ~seen, unchecked(sParaStart[i]));
    return false;
  }
  const cur = unchecked(sCur[i]);
  if (!(seen & F_ARCH)) {
    store<u32>(cur, 0xffffffff, 16);
    store<u32>(cur, 0, 20);
  }
  store<f64>(cur, <f64>unchecked(sParaStart[i]), 40);
  const k = unchecked(sNRec[i]);
  memory.copy(unchecked(sRec[i]) + <usize>k * <usize>PKGS_RECORD, cur, <usize>PKGS_RECORD);
  memory.copy(unchecked(sDig[i]) + (<usize>k << 5), cur + <usize>PKGS_RECORD, 32);
  unchecked((sNRec[i] = k + 1));
  unchecked((sSeen[i] = 0));
  unchecked((sInPara[i] = false));
  unchecked((sParaText[i] = unchecked(sTextFill[i])));
  return true;
}

// Parses the line [p, eol) of the input (eol: its \n, or the end of the input). False on error.
function line(i: i32, p: usize, eol: usize, at: u64): bool {
  let end = eol;
  if (end > p && load<u8>(end - 1) == 13) end--;
  if (end == p) {
    if (unchecked(sInPara[i])) return emit(i);
    return true;
  }
  const c = <u32>load<u8>(p);
  if (isBlank(c)) {
    let q = p + 1;
    while (q < end && isBlank(<u32>load<u8>(q))) q++;
    const blank = q == end;
    if (!unchecked(sInPara[i])) {
      if (!blank) {
        fail(i, E_CORRUPT, K_CONTINUATION, 0, at);
        return false;
      }
      return true;
    }
    return blank ? emit(i) : true;
  }
  let colon = p;
  while (colon < end && load<u8>(colon) != 58) colon++;
  if (colon >= end || colon == p) {
    fail(i, E_CORRUPT, K_NOT_FIELD, 0, at);
    return false;
  }
  if (!unchecked(sInPara[i])) {
    unchecked((sInPara[i] = true));
    unchecked((sParaStart[i] = at));
  }
  const len = colon - p;
  if (len > 12) return true;
  const f = fieldOf(p, len);
  if (f == 0) return true;
  if (unchecked(sSeen[i]) & f) {
    fail(i, E_CORRUPT, K_REPEATED, f, at);
    return false;
  }
  unchecked((sSeen[i] = unchecked(sSeen[i]) | f));
  let a = colon + 1;
  while (a < end && isBlank(<u32>load<u8>(a))) a++;
  let e = end;
  while (e > a && isBlank(<u32>load<u8>(e - 1))) e--;
  if (a == e) {
    fail(i, E_CORRUPT, K_EMPTY, f, at);
    return false;
  }
  const cur = unchecked(sCur[i]);
  const n = e - a;
  if (f == F_SIZE) {
    let v: u64 = 0;
    let ok = n <= 15;
    for (let q = a; q < e && ok; q++) {
      const d = <u32>load<u8>(q) - 48;
      if (d > 9) ok = false;
      else v = v * 10 + <u64>d;
    }
    if (!ok) {
      fail(i, E_CORRUPT, K_SIZE, F_SIZE, at);
      return false;
    }
    store<f64>(cur, <f64>v, 32);
    return true;
  }
  if (f == F_SHA256) {
    if (n != 64 || !hexDecode32(a, cur + <usize>PKGS_RECORD)) {
      fail(i, E_CORRUPT, K_SHA256, F_SHA256, at);
      return false;
    }
    return true;
  }
  if (n > <usize>PKGS_MAX_VALUE) {
    fail(i, E_LIMIT, K_VALUE_LONG, f, at);
    return false;
  }
  const fill = unchecked(sTextFill[i]);
  memory.copy(unchecked(sText[i]) + <usize>fill, a, n);
  const s = slotOf(f);
  store<u32>(cur + s, fill);
  store<u32>(cur + s + 4, <u32>n);
  unchecked((sTextFill[i] = fill + <u32>n));
  return true;
}

// Parses complete lines from sPos until the input, the records or the text
// area run out. Returns the records written, or the error status.
function run(i: i32): i32 {
  const inp = unchecked(sIn[i]);
  const endAll = inp + <usize>unchecked(sEnd[i]);
  const base = unchecked(sBase[i]);
  const recCap = unchecked(sRecCap[i]);
  const textCap = unchecked(sTextCap[i]);
  let p = inp + <usize>unchecked(sPos[i]);
  while (p < endAll) {
    // Room for one more record and one more value, else stop here (the host drains, then calls again).
    if (unchecked(sNRec[i]) >= recCap || unchecked(sTextFill[i]) + <u32>PKGS_MAX_VALUE > textCap) break;
    const eol = findEol(p, endAll);
    if (eol == endAll && !unchecked(sFinal[i])) break;
    if (!line(i, p, eol, base + <u64>(p - inp))) {
      unchecked((sPos[i] = <u32>(p - inp)));
      break;
    }
    p = eol + 1;
  }
  if (p > endAll) p = endAll;
  unchecked((sPos[i] = <u32>(p - inp)));
  return <i32>unchecked(sNRec[i]);
}

// Starts a call: the records of the last one are consumed; the paragraph in progress moves to the front of the text area.
function begin(i: i32): void {
  unchecked((sNRec[i] = 0));
  const from = unchecked(sParaText[i]);
  const fill = unchecked(sTextFill[i]);
  if (from != 0) {
    memory.copy(unchecked(sText[i]), unchecked(sText[i]) + <usize>from, <usize>(fill - from));
    const cur = unchecked(sCur[i]);
    const seen = unchecked(sSeen[i]);
    if (seen & F_PACKAGE) store<u32>(cur, load<u32>(cur) - from);
    if (seen & F_VERSION) store<u32>(cur, load<u32>(cur, 8) - from, 8);
    if (seen & F_ARCH) store<u32>(cur, load<u32>(cur, 16) - from, 16);
    if (seen & F_FILENAME) store<u32>(cur, load<u32>(cur, 24) - from, 24);
    unchecked((sTextFill[i] = fill - from));
    unchecked((sParaText[i] = 0));
  }
}

// The partial line to the front of the input buffer.
function compact(i: i32): void {
  const pos = unchecked(sPos[i]);
  if (pos == 0) return;
  const end = unchecked(sEnd[i]);
  const inp = unchecked(sIn[i]);
  memory.copy(inp, inp + <usize>pos, <usize>(end - pos));
  unchecked((sEnd[i] = end - pos));
  unchecked((sPos[i] = 0));
  unchecked((sBase[i] = unchecked(sBase[i]) + <u64>pos));
}

/**
 * Takes `n` more bytes the host wrote at pkgsInputAt (at most pkgsInputRoom)
 * and parses every complete line. Returns the number of records written to
 * the records, digests and text areas (valid until the next call); when it
 * is not 0, call again with n = 0 until it is (the areas filled up before the
 * input ran out). Errors: E_CORRUPT / E_LIMIT (pkgsErrorInfo says what and
 * where; records before the error come first, the error on the next call),
 * E_ARG (n out of range, after pkgsFinish), E_HANDLE.
 */
export function pkgsScan(h: i32, n: i32): i32 {
  if (!live(h)) return E_HANDLE;
  const i = h - 1;
  if (unchecked(sFinal[i]) && unchecked(sErr[i]) == 0) return E_ARG;
  if (n < 0 || <u32>n > unchecked(sCap[i]) - unchecked(sEnd[i])) return E_ARG;
  unchecked((sEnd[i] = unchecked(sEnd[i]) + <u32>n));
  const err = unchecked(sErr[i]);
  if (err != 0) return err;
  begin(i);
  const r = run(i);
  if (r == 0) {
    const e = unchecked(sErr[i]);
    if (e != 0) return e;
    compact(i);
    // A full buffer with no line end in it: the line is longer than the buffer.
    if (unchecked(sEnd[i]) == unchecked(sCap[i])) {
      fail(i, E_LIMIT, K_LINE_LONG, 0, unchecked(sBase[i]));
      return E_LIMIT;
    }
  }
  return r;
}

/**
 * The input has ended: parses what is left (a last line without a line end)
 * and ends the last paragraph. Returns the records written as pkgsScan does;
 * call again until it returns 0. Errors as pkgsScan.
 */
export function pkgsFinish(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  const i = h - 1;
  const err = unchecked(sErr[i]);
  if (err != 0) return err;
  unchecked((sFinal[i] = true));
  begin(i);
  let r = run(i);
  if (r == 0 && unchecked(sErr[i]) != 0) return unchecked(sErr[i]);
  if (unchecked(sPos[i]) < unchecked(sEnd[i])) return r; // stopped for room: more to come
  if (!unchecked(sDone[i]) && unchecked(sNRec[i]) < unchecked(sRecCap[i])) {
    unchecked((sDone[i] = true));
    if (unchecked(sInPara[i]) && !emit(i) && unchecked(sNRec[i]) == 0) return unchecked(sErr[i]);
    r = <i32>unchecked(sNRec[i]);
  }
  return r;
}

/** 0 when the module's checks pass (selfCheck module 8); needs no host buffers. */
export function packagesscanSelfCheck(): i32 {
  const h = pkgsCreate(MIN_INPUT, 2);
  if (h < 1) return 1;
  let r = 0;
  // Two paragraphs cut in the middle of a line; three records through a 2-record area.
  const text = "Package: a\nVersion: 1\nArchitecture: all\nFilename: p/a.deb\nSize: 12\nSHA256: " +
    "00".repeat(31) + "ff\n\nPackage: b\nVersion: 2\nFilename: p/b.deb\nSize: 3\nSHA256: " + "ab".repeat(32) + "\r\n \t\nPackage: c\nVersion: 3\nFilename: c\nSize: 0\nSHA256: " + "cd".repeat(32);
  const len = text.length;
  const half = len / 2;
  let at = pkgsInputAt(h);
  for (let k = 0; k < half; k++) store<u8>(at + <usize>k, <u8>text.charCodeAt(k));
  let got = 0;
  for (let s = pkgsScan(h, half); s > 0; s = pkgsScan(h, 0)) got += s;
  if (got != 1) r = 2;
  at = pkgsInputAt(h);
  for (let k = half; k < len; k++) store<u8>(at + <usize>(k - half), <u8>text.charCodeAt(k));
  const rec = pkgsRecords(h);
  const t = pkgsText(h);
  for (let s = pkgsScan(h, len - half); s > 0; s = pkgsScan(h, 0)) {
    // Record b (valid until the next call): version "2", no architecture, its digest decoded.
    if (r == 0 && (s != 1 || load<u8>(t + <usize>load<u32>(rec, 8)) != 50 || load<u32>(rec, 16) != 0xffffffff || load<u8>(pkgsDigests(h)) != 0xab)) r = 4;
    got += s;
  }
  if (r == 0 && got != 2) r = 3;
  const f = pkgsFinish(h);
  if (r == 0 && (f != 1 || load<f64>(rec, 32) != 0 || load<u8>(pkgsDigests(h), 31) != 0xcd)) r = 5;
  if (r == 0 && pkgsFinish(h) != 0) r = 6;
  pkgsDestroy(h);
  // Errors with their offsets: a continuation line outside a paragraph at byte 0.
  const g = pkgsCreate(MIN_INPUT, 4);
  if (g < 1) return 7;
  store<u8>(pkgsInputAt(g), 32);
  store<u8>(pkgsInputAt(g) + 1, 120);
  store<u8>(pkgsInputAt(g) + 2, 10);
  const info = heap.alloc(16);
  if (r == 0 && (pkgsScan(g, 3) != E_CORRUPT || pkgsErrorInfo(g, info) != E_CORRUPT || load<u32>(info) != K_CONTINUATION || load<f64>(info, 8) != 0)) r = 8;
  heap.free(info);
  pkgsDestroy(g);
  return r;
}
