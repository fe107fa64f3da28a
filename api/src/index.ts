// Public surface of @chaperone/api: the types the operator, sidecar and CLI share.
export * from './meta.ts';
export * from './schema.ts';
export * from './identity.ts';
export * from './protected-resource.ts';
export * from './access-policy.ts';
export * from './session.ts';
export * from './approval-request.ts';
export * from './audit-record.ts';
export * from './crds.ts';
export * from './policy.ts';
export * from './audit-chain.ts';
export * from './policy-bundle.ts';
export * from './audit-signature.ts';
export * from './duration.ts';
export * from './logger.ts';
