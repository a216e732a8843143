// An attestation service in this process over the sources a spec gives, as the whole-machine
// specs (Debian and RPM roots) start it: sources refreshed (all must answer), a fresh verifier,
// no worker threads, listening on a free port.
import { AttestService, type SourceSet } from '../bindings/attest/service/index.js';
import { createVerifier } from '../bindings/attest/service/verifier.js';

/** A running service, its address and the JWKS its tokens verify against. */
export interface LocalService {
  svc: AttestService;
  url: string;
  jwks: object;
}

/** Starts an {@link AttestService} over `sources` with these `installed` options (cache, ignore rules, budgets). */
export async function startLocalService(sources: SourceSet, installed: NonNullable<ConstructorParameters<typeof AttestService>[0]['installed']>): Promise<LocalService> {
  await sources.refreshAll({ requireAll: true });
  const verifier = await createVerifier();
  const svc = new AttestService({ sources, verifier, workers: 0, installed });
  return { svc, url: await svc.listen(0), jwks: await verifier.jwks() };
}
