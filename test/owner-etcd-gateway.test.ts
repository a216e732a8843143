// The etcd store's client side without a server, in Node and in Chromium (the
// store is plain fetch, so it must run in browsers): the requests it sends are
// what etcd's JSON gateway expects, a small in-memory gateway with etcd's txn
// semantics gives create-once and compare-and-swap, and malformed or hostile
// answers (a proxy, a wrong endpoint, a lying server) are refused with a
// VmkitError, a server that never answers times out, close() cancels. The
// real-etcd specs are owner-etcd*.node.test.ts.
import { describe, expect, it } from 'vitest';
import { etcdStore } from '../bindings/disk/owner/etcd-store.js';
import { VmkitError } from '../bindings/errors.js';
import { code, rec } from './_owner.js';
import { ownerStoreContract } from './_owner-contract.js';

const b64 = (s: string): string => btoa(String.fromCharCode(...new TextEncoder().encode(s)));
const unb64 = (s: string): string => new TextDecoder().decode(Uint8Array.from(atob(s), (c) => c.charCodeAt(0)));

/** etcd's range/txn over one revision counter, answering as the v3 JSON gateway does (int64 as strings, false/empty omitted). */
function fakeGateway(): { fetch: typeof fetch; requests: { url: string; method: string; type: string | null; body: Record<string, unknown> }[] } {
  const kv = new Map<string, { value: string; create: number; mod: number }>();
  let revision = 1;
  const requests: { url: string; method: string; type: string | null; body: Record<string, unknown> }[] = [];
  const header = (): Record<string, string> => ({ cluster_id: '1', member_id: '2', revision: String(revision), raft_term: '2' });
  const f = (async (url: string | URL | Request, init?: RequestInit) => {
    const body = JSON.parse(String(init?.body)) as Record<string, any>;
    requests.push({ url: String(url), method: String(init?.method), type: new Headers(init?.headers).get('content-type'), body });
    if (String(url).endsWith('/v3/kv/range')) {
      const e = kv.get(body.key);
      const out: Record<string, unknown> = { header: header() };
      if (e) Object.assign(out, { kvs: [{ key: body.key, create_revision: String(e.create), mod_revision: String(e.mod), version: '1', value: e.value }], count: '1' });
      return new Response(JSON.stringify(out));
    }
    if (String(url).endsWith('/v3/kv/txn')) {
      const ok = (body.compare as any[]).every((c) => {
        const e = kv.get(c.key);
        if (c.target === 'CREATE') return c.result === 'EQUAL' && (e?.create ?? 0) === Number(c.create_revision);
        if (c.target === 'MOD') return c.result === 'EQUAL' && (e?.mod ?? 0) === Number(c.mod_revision);
        return false;
      });
      if (!ok) return new Response(JSON.stringify({ header: header() }));
      revision++;
      for (const op of body.success as any[]) {
        const p = op.request_put;
        kv.set(p.key, { value: p.value, create: kv.get(p.key)?.create ?? revision, mod: revision });
      }
      return new Response(JSON.stringify({ header: header(), succeeded: true, responses: [{ response_put: { header: header() } }] }));
    }
    return new Response(JSON.stringify({ error: 'Not Found', code: 5, message: 'Not Found' }), { status: 404 });
  }) as typeof fetch;
  return { fetch: f, requests };
}

// The store contract, against the in-memory gateway (in Chromium too: the store is plain fetch).
ownerStoreContract('etcd (JSON gateway, no server)', () => {
  const g = fakeGateway();
  let n = 0;
  return { client: () => etcdStore({ endpoints: 'http://etcd.test:2379', prefix: '/c/', fetch: g.fetch }), disk: (name) => `${name}-${++n}.qcow2`, revision: /^[1-9][0-9]*$/ };
});

describe('owner store: etcd client (no server)', () => {
  it('speaks the v3 JSON gateway: base64 keys under the prefix, txn on create_revision / mod_revision', async () => {
    const g = fakeGateway();
    const s = etcdStore({ endpoints: 'http://etcd.test:2379/', prefix: '/p/', fetch: g.fetch });
    const d = 'pool/vm é.qcow2';
    expect(await s.read(d)).toEqual({ record: null, revision: null });
    const r1 = await s.compareAndSwap(d, null, rec(d, 1));
    expect(r1).toBe('2');
    expect(await s.compareAndSwap(d, null, rec(d, 1, 'vm-b'))).toBeNull();
    expect(await s.compareAndSwap(d, '1', rec(d, 2, 'vm-b'))).toBeNull();
    const r2 = await s.compareAndSwap(d, r1, rec(d, 2, 'vm-b'));
    expect(r2).toBe('3');
    const snap = await s.read(d);
    expect(snap.revision).toBe('3');
    expect(snap.record).toMatchObject({ disk: d, epoch: 2, owner: { id: 'vm-b' } });

    for (const r of g.requests) {
      expect(r.method).toBe('POST');
      expect(r.type).toBe('application/json');
      expect(r.url).toMatch(/^http:\/\/etcd\.test:2379\/v3\/kv\/(range|txn)$/);
      expect(unb64(r.body.key as string ?? (r.body.compare as any)[0].key)).toBe(`/p/${d}`);
    }
    const txns = g.requests.filter((r) => r.url.endsWith('/txn')).map((r) => r.body as any);
    expect(txns[0].compare).toEqual([{ key: b64(`/p/${d}`), result: 'EQUAL', target: 'CREATE', create_revision: '0' }]);
    expect(txns[3].compare).toEqual([{ key: b64(`/p/${d}`), result: 'EQUAL', target: 'MOD', mod_revision: '2' }]);
    // The stored value is the record's JSON, as the file store writes it.
    expect(JSON.parse(unb64(txns[3].success[0].request_put.value))).toMatchObject({ version: 1, disk: d, epoch: 2 });
  });

  it('refuses a malformed gateway answer (a proxy or a hostile server)', async () => {
    const d = 'x.qcow2';
    const key = b64(`/t/${d}`);
    const good = JSON.stringify(rec(d, 1));
    const answers: [string, number, string, string][] = [
      ['html', 200, '<html>proxy</html>', 'NETWORK'],
      ['no header', 200, '{}', 'NETWORK'],
      ['revision not decimal', 200, JSON.stringify({ header: { revision: '1e9' } }), 'NETWORK'],
      ['revision past int64', 200, JSON.stringify({ header: { revision: '9223372036854775808' } }), 'NETWORK'],
      ['two kvs', 200, JSON.stringify({ header: { revision: '9' }, kvs: [{ key, mod_revision: '3', value: b64(good) }, { key, mod_revision: '4', value: b64(good) }] }), 'NETWORK'],
      ['other key', 200, JSON.stringify({ header: { revision: '9' }, kvs: [{ key: b64('/t/y'), mod_revision: '3', value: b64(good) }] }), 'NETWORK'],
      ['mod_revision as number', 200, JSON.stringify({ header: { revision: '9' }, kvs: [{ key, mod_revision: 3, value: b64(good) }] }), 'NETWORK'],
      ['mod_revision 0', 200, JSON.stringify({ header: { revision: '9' }, kvs: [{ key, mod_revision: '0', value: b64(good) }] }), 'NETWORK'],
      ['value not base64', 200, JSON.stringify({ header: { revision: '9' }, kvs: [{ key, mod_revision: '3', value: '%%%' }] }), 'CORRUPT'],
      ['value not a record', 200, JSON.stringify({ header: { revision: '9' }, kvs: [{ key, mod_revision: '3', value: b64('{"version":1}') }] }), 'CORRUPT'],
      ['record of another disk', 200, JSON.stringify({ header: { revision: '9' }, kvs: [{ key, mod_revision: '3', value: b64(JSON.stringify(rec('y.qcow2', 1))) }] }), 'CORRUPT'],
      ['huge body', 200, JSON.stringify({ header: { revision: '9' }, pad: 'x'.repeat(400_000) }), 'LIMIT'],
      ['grpc unauthenticated', 401, JSON.stringify({ error: 'invalid auth token', code: 16, message: 'invalid auth token' }), 'REFUSED'],
      ['grpc unavailable', 503, JSON.stringify({ error: 'no leader', code: 14, message: 'etcdserver: no leader' }), 'NETWORK'],
      ['grpc deadline', 504, JSON.stringify({ error: 'timed out', code: 4, message: 'context deadline exceeded' }), 'TIMEOUT'],
    ];
    for (const [name, status, body, want] of answers) {
      const s = etcdStore({ endpoints: 'http://etcd.test:2379', prefix: '/t/', fetch: async () => new Response(body, { status }) });
      expect([name, await code(s.read(d))]).toEqual([name, want]);
    }
    // A txn that claims success without a put, or a non-boolean verdict.
    const weird = etcdStore({ endpoints: 'http://etcd.test:2379', prefix: '/t/', fetch: async () => new Response(JSON.stringify({ header: { revision: '9' }, succeeded: 'yes' })) });
    expect(await code(weird.compareAndSwap(d, '3', rec(d, 2)))).toBe('NETWORK');
    const empty = etcdStore({ endpoints: 'http://etcd.test:2379', prefix: '/t/', fetch: async () => new Response(JSON.stringify({ header: { revision: '9' }, succeeded: true })) });
    expect(await code(empty.compareAndSwap(d, '3', rec(d, 2)))).toBe('NETWORK');
  });

  it('checks its arguments', async () => {
    expect(() => etcdStore({ endpoints: [] })).toThrow(VmkitError);
    expect(() => etcdStore({ endpoints: 'etcd:2379' })).toThrow(/http: or https:/);
    expect(() => etcdStore({ endpoints: 'http://e', timeoutMs: 0 })).toThrow(/timeoutMs/);
    const s = etcdStore({ endpoints: 'http://e', fetch: fakeGateway().fetch });
    expect(await code(s.read(''))).toBe('ARG_TYPE');
    expect(await code(s.compareAndSwap('a', '0', rec('a', 1)))).toBe('ARG_RANGE');
    expect(await code(s.compareAndSwap('a', '-1', rec('a', 1)))).toBe('ARG_RANGE');
    expect(await code(s.compareAndSwap('a', '9223372036854775808', rec('a', 1)))).toBe('ARG_RANGE');
    expect(await code(s.compareAndSwap('a', null, rec('b', 1)))).toBe('ARG_RANGE');
    await s.close();
    expect(await code(s.read('a'))).toBe('INVALID_STATE');
  });

  it('a server that never answers: TIMEOUT at the deadline; close() cancels what is in flight', async () => {
    // A fetch that only ends when its signal aborts (a hung etcd, or a black-holed route).
    const hang = ((_url: string, init?: RequestInit) =>
      new Promise<Response>((_, reject) => init?.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))))) as typeof fetch;
    const s = etcdStore({ endpoints: 'http://etcd.test:2379', timeoutMs: 150, fetch: hang });
    const t = Date.now();
    expect(await code(s.read('a'))).toBe('TIMEOUT');
    expect(await code(s.compareAndSwap('a', null, rec('a', 1)))).toBe('TIMEOUT');
    expect(Date.now() - t).toBeGreaterThanOrEqual(280);
    expect(Date.now() - t).toBeLessThan(5000); // 2 x 150 ms, not 2 x the 3 s default (wide: a loaded machine runs timers late)
    const c = etcdStore({ endpoints: 'http://etcd.test:2379', timeoutMs: 60_000, fetch: hang });
    const p = code(c.read('a'));
    await new Promise((r) => setTimeout(r, 20));
    await c.close();
    expect(await p).toBe('CANCELLED');
    expect(await code(c.read('a'))).toBe('INVALID_STATE');
  });
});

