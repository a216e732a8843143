import { describe, expect, it } from 'vitest';
import { ErrorCode, VmkitError, isVmkitError } from '../bindings/errors.js';
import { abytes, aint, aoutput, au64 } from '../bindings/_utils.js';

describe('VmkitError', () => {
  it('carries a stable code, cause, offset and path', () => {
    const cause = new Error('inner');
    const e = new VmkitError('CORRUPT', 'bad header at 0x40', { cause, offset: 0x40n, path: 'x.qcow2' });
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('VmkitError');
    expect(e.code).toBe('CORRUPT');
    expect(e.cause).toBe(cause);
    expect(e.toJSON()).toEqual({ name: 'VmkitError', code: 'CORRUPT', message: 'bad header at 0x40', offset: '64', path: 'x.qcow2' });
    expect(isVmkitError(e, 'CORRUPT')).toBe(true);
    expect(isVmkitError(e, 'IO')).toBe(false);
  });

  it('instanceof holds for an error made by another copy of the module (the CLI bundle beside ES modules)', async () => {
    // @ts-expect-error -- a second instance of the same module, by a query string
    const copy = (await import('../bindings/errors.js?copy')) as typeof import('../bindings/errors.js');
    expect(copy.VmkitError).not.toBe(VmkitError);
    const e = new copy.VmkitError('LIMIT', 'too deep');
    expect(e instanceof VmkitError).toBe(true);
    expect(new VmkitError('IO', 'x') instanceof copy.VmkitError).toBe(true);
    expect(new Error('plain') instanceof VmkitError).toBe(false);
    expect({ code: 'IO' } instanceof VmkitError).toBe(false);
    expect((null as unknown) instanceof VmkitError).toBe(false);
    // A subclass keeps the prototype check: a plain VmkitError is not one.
    class Sub extends VmkitError {}
    expect(new Sub('IO', 'x') instanceof Sub).toBe(true);
    expect(new VmkitError('IO', 'x') instanceof Sub).toBe(false);
    expect(new Sub('IO', 'x') instanceof VmkitError).toBe(true);
  });

  it('has codes equal to their names', () => {
    for (const [k, v] of Object.entries(ErrorCode)) expect(v).toBe(k);
  });

  it('argument checks name the argument', () => {
    expect(() => abytes('x', 'data')).toThrow(/data must be a Uint8Array/);
    expect(() => abytes(new Uint8Array(2), 'data', 4)).toThrow(/at least 4 bytes/);
    expect(() => aint(1.5, 'count')).toThrow(expect.objectContaining({ code: 'ARG_TYPE' }));
    expect(() => aint(-1, 'count')).toThrow(expect.objectContaining({ code: 'ARG_RANGE', message: expect.stringMatching(/count/) }));
    expect(() => aoutput(new Uint8Array(3), 4)).toThrow(expect.objectContaining({ code: 'OUTPUT_TOO_SMALL' }));
    expect(au64(5, 'gva')).toBe(5n);
    expect(() => au64(2n ** 64n, 'gva')).toThrow(/gva must be in/);
  });
});
