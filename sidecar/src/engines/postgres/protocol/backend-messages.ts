/**
 * Backend (server → client) message codes and the field types shared by the encoder and the scanner.
 *
 * @see https://www.postgresql.org/docs/current/protocol-message-formats.html
 */

/** Type bytes of backend messages. */
export const BackendCode = {
  Authentication: 0x52, // 'R'
  BackendKeyData: 0x4b, // 'K'
  BindComplete: 0x32, // '2'
  CloseComplete: 0x33, // '3'
  CommandComplete: 0x43, // 'C'
  CopyData: 0x64, // 'd'
  CopyDone: 0x63, // 'c'
  CopyInResponse: 0x47, // 'G'
  CopyOutResponse: 0x48, // 'H'
  CopyBothResponse: 0x57, // 'W'
  DataRow: 0x44, // 'D'
  EmptyQueryResponse: 0x49, // 'I'
  ErrorResponse: 0x45, // 'E'
  FunctionCallResponse: 0x56, // 'V'
  NegotiateProtocolVersion: 0x76, // 'v'
  NoData: 0x6e, // 'n'
  NoticeResponse: 0x4e, // 'N'
  NotificationResponse: 0x41, // 'A'
  ParameterDescription: 0x74, // 't'
  ParameterStatus: 0x53, // 'S'
  ParseComplete: 0x31, // '1'
  PortalSuspended: 0x73, // 's'
  ReadyForQuery: 0x5a, // 'Z'
  RowDescription: 0x54, // 'T'
} as const;
export type BackendCode = (typeof BackendCode)[keyof typeof BackendCode];

/** Whether `code` is a known backend message type. */
export function isBackendCode(code: number): code is BackendCode {
  switch (code) {
    case BackendCode.Authentication:
    case BackendCode.BackendKeyData:
    case BackendCode.BindComplete:
    case BackendCode.CloseComplete:
    case BackendCode.CommandComplete:
    case BackendCode.CopyData:
    case BackendCode.CopyDone:
    case BackendCode.CopyInResponse:
    case BackendCode.CopyOutResponse:
    case BackendCode.CopyBothResponse:
    case BackendCode.DataRow:
    case BackendCode.EmptyQueryResponse:
    case BackendCode.ErrorResponse:
    case BackendCode.FunctionCallResponse:
    case BackendCode.NegotiateProtocolVersion:
    case BackendCode.NoData:
    case BackendCode.NoticeResponse:
    case BackendCode.NotificationResponse:
    case BackendCode.ParameterDescription:
    case BackendCode.ParameterStatus:
    case BackendCode.ParseComplete:
    case BackendCode.PortalSuspended:
    case BackendCode.ReadyForQuery:
    case BackendCode.RowDescription:
      return true;
    default:
      return false;
  }
}

/** Sub-codes of the Authentication ('R') message. */
export const AuthCode = {
  Ok: 0,
  KerberosV5: 2,
  CleartextPassword: 3,
  MD5Password: 5,
  GSS: 7,
  GSSContinue: 8,
  SSPI: 9,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;
export type AuthCode = (typeof AuthCode)[keyof typeof AuthCode];

/** ReadyForQuery status: idle, in a transaction block, or in a failed transaction block. */
export type TransactionStatus = 'I' | 'T' | 'E';

/** Result column format: 0 = text, 1 = binary. */
export type FormatCode = 0 | 1;

/** One column of a RowDescription. */
export interface FieldDescription {
  readonly name: string;
  /** OID of the source table, or 0 if the column is not a plain table column. */
  readonly tableOid: number;
  /** Attribute number of the column in that table, or 0. */
  readonly columnAttr: number;
  readonly typeOid: number;
  /** pg_type.typlen; negative for variable-width types. */
  readonly typeSize: number;
  /** pg_attribute.atttypmod; -1 when not applicable. */
  readonly typeModifier: number;
  readonly format: number;
}

/**
 * Fields of an ErrorResponse or NoticeResponse, by their PostgreSQL names.
 * @see https://www.postgresql.org/docs/current/protocol-error-fields.html
 */
export interface ErrorFields {
  /** 'S': localized severity (ERROR, FATAL, PANIC, WARNING, NOTICE, DEBUG, INFO, LOG). */
  readonly severity: string;
  /** 'V': non-localized severity; the encoder defaults it to `severity`. */
  readonly severityNonLocalized?: string;
  /** 'C': SQLSTATE. */
  readonly code: string;
  /** 'M': primary message. */
  readonly message: string;
  /** 'D' */
  readonly detail?: string;
  /** 'H' */
  readonly hint?: string;
  /** 'P': 1-based character position in the query string. */
  readonly position?: string;
  /** 'p' */
  readonly internalPosition?: string;
  /** 'q' */
  readonly internalQuery?: string;
  /** 'W' */
  readonly where?: string;
  /** 's' */
  readonly schema?: string;
  /** 't' */
  readonly table?: string;
  /** 'c' */
  readonly column?: string;
  /** 'd' */
  readonly dataType?: string;
  /** 'n' */
  readonly constraint?: string;
  /** 'F' */
  readonly file?: string;
  /** 'L' */
  readonly line?: string;
  /** 'R' */
  readonly routine?: string;
  /** Any other fields, keyed by their one-character code. */
  readonly extra?: Readonly<Record<string, string>>;
}

/** Optional named fields of {@link ErrorFields} and their one-character wire codes, in the server's order. */
export const ERROR_FIELD_CODES = {
  detail: 'D',
  hint: 'H',
  position: 'P',
  internalPosition: 'p',
  internalQuery: 'q',
  where: 'W',
  schema: 's',
  table: 't',
  column: 'c',
  dataType: 'd',
  constraint: 'n',
  file: 'F',
  line: 'L',
  routine: 'R',
} as const;
export type OptionalErrorField = keyof typeof ERROR_FIELD_CODES;
