// Reads every Session object of one namespace (or of all), page by page; shared by the retention
// controller and the checkpoint writer.
import type { CustomObjectsApi } from '@kubernetes/client-node';
import { GROUP, VERSION, type Session } from '@chaperone/api';

interface SessionPage {
  items?: Session[];
  metadata?: { continue?: string };
}

/** Every Session in `namespace`, or in every namespace when it is undefined. */
export async function listSessions(client: CustomObjectsApi, namespace: string | undefined): Promise<Session[]> {
  const sessions: Session[] = [];
  let cont: string | undefined;
  do {
    const page = (
      namespace === undefined
        ? await client.listClusterCustomObject({
            group: GROUP,
            version: VERSION,
            plural: 'sessions',
            limit: 500,
            _continue: cont,
          })
        : await client.listNamespacedCustomObject({
            group: GROUP,
            version: VERSION,
            namespace,
            plural: 'sessions',
            limit: 500,
            _continue: cont,
          })
    ) as SessionPage;
    sessions.push(...(page.items ?? []));
    cont = page.metadata?.continue === '' ? undefined : page.metadata?.continue;
  } while (cont !== undefined);
  return sessions;
}
