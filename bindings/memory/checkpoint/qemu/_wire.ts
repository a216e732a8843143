/**
 * Constants of QEMU's migration stream (QEMU 7.2: migration/savevm.c,
 * migration/ram.c).
 * @module
 */

/** QEMU_VM_FILE_MAGIC, "QEVM". */
export const STREAM_MAGIC = 0x5145564d;
/** QEMU_VM_FILE_VERSION. */
export const STREAM_VERSION = 3;

/** Section type bytes (QEMU_VM_*). */
export const SEC = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/** RAM_SAVE_FLAG_* in the low bits of a ram record's be64 address word. */
export const RAM = {
  /** Obsolete "full" flag (0x01): never sent, refused. */
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  HOOK: 0x80,
  COMPRESS_PAGE: 0x100,
  /** RAM_SAVE_FLAG_MULTIFD_FLUSH (QEMU 8.0+). */
  MULTIFD_FLUSH: 0x200,
  KNOWN: 0x3e,
  UNSUPPORTED: 0x3c0,
} as const;
