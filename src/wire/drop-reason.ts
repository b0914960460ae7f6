/**
 * Why a received frame was not accepted. Stable strings: they name counters in metrics and the
 * control API, so a code is never renamed, only added.
 */
export type DropReason =
  | 'truncated-ethernet'
  | 'not-ipv4'
  | 'truncated-ipv4'
  | 'bad-ipv4-version'
  | 'bad-ipv4-header-length'
  | 'bad-ipv4-total-length'
  | 'bad-ipv4-checksum'
  | 'ipv4-fragment'
  | 'not-tcp'
  | 'truncated-tcp'
  | 'bad-tcp-header-length'
  | 'bad-tcp-option'
  | 'bad-tcp-checksum'
  | 'bad-vrio-option'
