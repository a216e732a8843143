// Types of scripts/_guest.mjs for the TypeScript specs that use it (test/nbd-guest.node.test.ts).
import type { ChildProcess } from 'node:child_process';

export interface KernelModule {
  name: string;
  file: string;
}
export interface WriterAck {
  /** Block number. */
  n: number;
  /** The guest's /proc/uptime when it was acknowledged, in seconds. */
  up: number;
  /** sha256 of the block, as the guest computed it. */
  sha: string;
  /** Host time (ms) the console line arrived. */
  at: number;
}
export interface WriterGuest {
  qemu: ChildProcess;
  lines: string[];
  acks: WriterAck[];
  token: string | undefined;
  max: number | undefined;
  done: number | undefined;
  /** True once the writer printed the kernel log (DMESG-END). */
  logged: boolean;
  stderr: string;
  exited: Promise<number | null>;
  until(what: string, pred: (g: WriterGuest) => boolean, timeoutMs?: number): Promise<WriterGuest>;
  stop(): void;
  kill(): void;
}
export interface Qmp {
  execute(cmd: string, args?: Record<string, unknown>): Promise<unknown>;
  events: { event: string; data: Record<string, unknown>; at: number }[];
  waitEvent(name: string, pred?: (e: { data: Record<string, unknown> }) => boolean, timeoutMs?: number): Promise<{ event: string; data: Record<string, unknown>; at: number }>;
  close(): void;
}

export function which(cmd: string): string | undefined;
export function findKernel(): string | undefined;
export function fileKey(path: string): string;
export function kernelModules(kernel: string, names: string[]): KernelModule[];
export function buildInitramfs(dir: string, opts: { init: string; modules?: KernelModule[] }): string;
export function insmodLines(modules: KernelModule[]): string;
export function monitor(sockPath: string): Promise<{ cmd(line: string): Promise<string>; close(): void }>;
export function qmp(sockPath: string): Promise<Qmp>;
export const WRITER_BLOCK: number;
export function writerInit(modules: KernelModule[], opts: { max: number }): string;
export function writerBlock(n: number, token: string): Uint8Array;
export const IO_ERROR_LINE: RegExp;
export function bootWriter(opts: { kernel: string; initrd: string; accel?: string; qemuArgs: string[]; qmpPath: string; ramMiB?: number }): Promise<WriterGuest>;
export function pickAccel(kernel: string, workDir: string, timeoutMs?: number): Promise<'kvm' | 'tcg' | string>;
