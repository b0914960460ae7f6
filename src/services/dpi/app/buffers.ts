/**
 * Inspection buffers a rule's payload items can be bound to, and the rule keywords that select
 * them, as Suricata names them (sticky buffers `http.uri;`, legacy sticky forms `file_data;`,
 * content modifiers `content:"x"; http_uri;` and pcre flags `/x/U`).
 *
 * 'payload' is the default buffer of a rule: the packet's payload, and for TCP the reassembled
 * stream (as Suricata inspects unbuffered content against packet and stream). The others are
 * application-layer buffers, built by the parsers in this folder (http.ts, dns.ts, tls.ts) for
 * flows whose protocol was detected by content (detect.ts).
 */

/**
 * Protocols detected by content. http, dns and tls have parsers and buffers; ftp, smtp, smb and
 * ssh are only detected, so that `alert ftp|smtp|smb|ssh` rules match their flows' payload.
 */
export type AppProto = 'http' | 'dns' | 'tls' | 'ftp' | 'smtp' | 'smb' | 'ssh'

export type BufferId =
  | 'payload'
  | 'stream'
  // HTTP request
  | 'http.uri'
  | 'http.uri.raw'
  | 'http.method'
  | 'http.protocol'
  | 'http.request_line'
  | 'http.host'
  | 'http.host.raw'
  | 'http.user_agent'
  | 'http.header'
  | 'http.header.raw'
  | 'http.header_names'
  | 'http.request_header'
  | 'http.cookie'
  | 'http.accept'
  | 'http.accept_enc'
  | 'http.accept_lang'
  | 'http.referer'
  | 'http.connection'
  | 'http.content_type'
  | 'http.content_len'
  | 'http.start'
  | 'http.request_body'
  // HTTP response
  | 'http.stat_code'
  | 'http.stat_msg'
  | 'http.response_line'
  | 'http.response_header'
  | 'http.location'
  | 'http.server'
  | 'http.response_body'
  /** file_data: the HTTP body of the rule's direction (request for to_server, else response). */
  | 'file.data'
  // DNS
  | 'dns.query'
  | 'dns.answer.name'
  // TLS
  | 'tls.sni'
  | 'tls.version'
  | 'tls.cert_subject'
  | 'tls.cert_issuer'
  | 'tls.cert_serial'
  | 'tls.cert_fingerprint'
  | 'tls.certs'
  | 'ja3.hash'
  | 'ja3.string'
  | 'ja3s.hash'
  | 'ja3s.string'

/** Per buffer: the application protocol that produces it (none for payload/stream). */
export const BUFFER_PROTO: Readonly<Record<BufferId, AppProto | undefined>> = {
  payload: undefined,
  stream: undefined,
  'http.uri': 'http',
  'http.uri.raw': 'http',
  'http.method': 'http',
  'http.protocol': 'http',
  'http.request_line': 'http',
  'http.host': 'http',
  'http.host.raw': 'http',
  'http.user_agent': 'http',
  'http.header': 'http',
  'http.header.raw': 'http',
  'http.header_names': 'http',
  'http.request_header': 'http',
  'http.cookie': 'http',
  'http.accept': 'http',
  'http.accept_enc': 'http',
  'http.accept_lang': 'http',
  'http.referer': 'http',
  'http.connection': 'http',
  'http.content_type': 'http',
  'http.content_len': 'http',
  'http.start': 'http',
  'http.request_body': 'http',
  'http.stat_code': 'http',
  'http.stat_msg': 'http',
  'http.response_line': 'http',
  'http.response_header': 'http',
  'http.location': 'http',
  'http.server': 'http',
  'http.response_body': 'http',
  'file.data': 'http',
  'dns.query': 'dns',
  'dns.answer.name': 'dns',
  'tls.sni': 'tls',
  'tls.version': 'tls',
  'tls.cert_subject': 'tls',
  'tls.cert_issuer': 'tls',
  'tls.cert_serial': 'tls',
  'tls.cert_fingerprint': 'tls',
  'tls.certs': 'tls',
  'ja3.hash': 'tls',
  'ja3.string': 'tls',
  'ja3s.hash': 'tls',
  'ja3s.string': 'tls',
}

/** True for buffers that only exist in the server→client direction. */
export const RESPONSE_BUFFERS: ReadonlySet<BufferId> = new Set<BufferId>([
  'http.stat_code',
  'http.stat_msg',
  'http.response_line',
  'http.response_header',
  'http.location',
  'http.server',
  'http.response_body',
  'dns.answer.name',
  'tls.cert_subject',
  'tls.cert_issuer',
  'tls.cert_serial',
  'tls.cert_fingerprint',
  'tls.certs',
  'tls.version',
  'ja3s.hash',
  'ja3s.string',
])

/**
 * Sticky buffer keywords (`http.uri;` then contents), the dotted names and the legacy sticky
 * forms. `pkt_data` returns to the payload.
 */
export const STICKY_BUFFERS: ReadonlyMap<string, BufferId> = new Map<string, BufferId>([
  ['pkt_data', 'payload'],
  ['http.uri', 'http.uri'],
  ['http.uri.raw', 'http.uri.raw'],
  ['http.method', 'http.method'],
  ['http.protocol', 'http.protocol'],
  ['http.request_line', 'http.request_line'],
  ['http_request_line', 'http.request_line'],
  ['http.host', 'http.host'],
  ['http.host.raw', 'http.host.raw'],
  ['http.user_agent', 'http.user_agent'],
  ['http.header', 'http.header'],
  ['http.header.raw', 'http.header.raw'],
  ['http.header_names', 'http.header_names'],
  ['http_header_names', 'http.header_names'],
  ['http.request_header', 'http.request_header'],
  ['http.cookie', 'http.cookie'],
  ['http.accept', 'http.accept'],
  ['http_accept', 'http.accept'],
  ['http.accept_enc', 'http.accept_enc'],
  ['http_accept_enc', 'http.accept_enc'],
  ['http.accept_lang', 'http.accept_lang'],
  ['http_accept_lang', 'http.accept_lang'],
  ['http.referer', 'http.referer'],
  ['http_referer', 'http.referer'],
  ['http.connection', 'http.connection'],
  ['http_connection', 'http.connection'],
  ['http.content_type', 'http.content_type'],
  ['http_content_type', 'http.content_type'],
  ['http.content_len', 'http.content_len'],
  ['http_content_len', 'http.content_len'],
  ['http.start', 'http.start'],
  ['http_start', 'http.start'],
  ['http.request_body', 'http.request_body'],
  ['http.stat_code', 'http.stat_code'],
  ['http.stat_msg', 'http.stat_msg'],
  ['http.response_line', 'http.response_line'],
  ['http_response_line', 'http.response_line'],
  ['http.response_header', 'http.response_header'],
  ['http.location', 'http.location'],
  ['http.server', 'http.server'],
  ['http.response_body', 'http.response_body'],
  ['file_data', 'file.data'],
  ['file.data', 'file.data'],
  ['dns.query', 'dns.query'],
  ['dns_query', 'dns.query'],
  ['dns.answer.name', 'dns.answer.name'],
  ['tls.sni', 'tls.sni'],
  ['tls_sni', 'tls.sni'],
  ['tls.cert_subject', 'tls.cert_subject'],
  ['tls_cert_subject', 'tls.cert_subject'],
  ['tls.cert_issuer', 'tls.cert_issuer'],
  ['tls_cert_issuer', 'tls.cert_issuer'],
  ['tls.cert_serial', 'tls.cert_serial'],
  ['tls_cert_serial', 'tls.cert_serial'],
  ['tls.cert_fingerprint', 'tls.cert_fingerprint'],
  ['tls_cert_fingerprint', 'tls.cert_fingerprint'],
  ['tls.certs', 'tls.certs'],
  ['ja3.hash', 'ja3.hash'],
  ['ja3_hash', 'ja3.hash'],
  ['ja3.string', 'ja3.string'],
  ['ja3_string', 'ja3.string'],
  ['ja3s.hash', 'ja3s.hash'],
  ['ja3s_hash', 'ja3s.hash'],
  ['ja3s.string', 'ja3s.string'],
  ['ja3s_string', 'ja3s.string'],
])

/** Content modifiers (after a content: `content:"x"; http_uri;`) moving it into a buffer. */
export const CONTENT_MODIFIERS: ReadonlyMap<string, BufferId> = new Map<string, BufferId>([
  ['http_uri', 'http.uri'],
  ['http_raw_uri', 'http.uri.raw'],
  ['http_method', 'http.method'],
  ['http_header', 'http.header'],
  ['http_raw_header', 'http.header.raw'],
  ['http_cookie', 'http.cookie'],
  ['http_raw_cookie', 'http.cookie'],
  ['http_user_agent', 'http.user_agent'],
  ['http_host', 'http.host'],
  ['http_raw_host', 'http.host.raw'],
  ['http_stat_code', 'http.stat_code'],
  ['http_stat_msg', 'http.stat_msg'],
  ['http_client_body', 'http.request_body'],
  ['http_server_body', 'http.response_body'],
])

/** Suricata's HTTP pcre flags: `/x/U` is `http_uri`, ... */
export const PCRE_BUFFER_FLAGS: ReadonlyMap<string, BufferId> = new Map<string, BufferId>([
  ['U', 'http.uri'],
  ['I', 'http.uri.raw'],
  ['P', 'http.request_body'],
  ['Q', 'file.data'],
  ['H', 'http.header'],
  ['D', 'http.header.raw'],
  ['M', 'http.method'],
  ['C', 'http.cookie'],
  ['K', 'http.cookie'],
  ['S', 'http.stat_code'],
  ['Y', 'http.stat_msg'],
  ['V', 'http.user_agent'],
  ['W', 'http.host'],
  ['Z', 'http.host.raw'],
])

/** The application protocols a rule header can name (`alert http ...`), by header word. */
export const APP_PROTOCOLS: ReadonlyMap<string, AppProto> = new Map<string, AppProto>([
  ['http', 'http'],
  ['http1', 'http'],
  ['dns', 'dns'],
  ['tls', 'tls'],
  ['ftp', 'ftp'],
  ['smtp', 'smtp'],
  ['smb', 'smb'],
  ['ssh', 'ssh'],
])
