// Debian's nginx for a spec: started on 127.0.0.1 with a generated config that
// keeps every file it writes (pid, logs, request bodies) under the spec's own
// folder, serving `root`, with the spec's extra server directives (the dav
// module's PUT/DELETE/MKCOL, JSON autoindex, …). Node only; callers check
// needTool('nginx', 'nginx-light') first.
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** A running nginx. */
export interface Nginx {
  /** `http://127.0.0.1:<port>` */
  base: string;
  /** Its access log (one line per request). */
  accessLog: string;
  stop(): void;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Starts nginx serving `root`, its state in `dir`; resolves once it answers. */
export async function startNginx(dir: string, root: string, serverDirectives = ''): Promise<Nginx> {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const t = (n: string): string => join(dir, n);
  writeFileSync(
    t('nginx.conf'),
    `daemon off; worker_processes 1; user root; pid ${t('nginx.pid')}; error_log ${t('error.log')};
events { worker_connections 1024; }
http {
  access_log ${t('access.log')}; client_body_temp_path ${t('cb')}; proxy_temp_path ${t('px')};
  fastcgi_temp_path ${t('fc')}; uwsgi_temp_path ${t('uw')}; scgi_temp_path ${t('sc')};
  server { listen 127.0.0.1:${port}; root ${root}; client_max_body_size 0; ${serverDirectives} }
}
`,
  );
  const nginx = spawn('nginx', ['-c', t('nginx.conf'), '-p', dir, '-e', t('error.log')], { stdio: 'inherit' });
  for (let i = 0; ; i++) {
    try {
      await fetch(`${base}/`);
      break;
    } catch {
      if (i > 200) throw new Error('nginx did not start');
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { base, accessLog: t('access.log'), stop: () => void nginx.kill('SIGTERM') };
}
