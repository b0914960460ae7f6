/**
 * The one rule for each kind of name, used by the config schema, the control API, the state file
 * and both daemons alike.
 */

/** Disk names (and NIC names as device names): what `vrio blk create --name` accepts. */
export const DEVICE_NAME_RE = /^[A-Za-z0-9._-]{1,64}$/
export const DEVICE_NAME_RULE = "1-64 letters, digits, '.', '-' or '_'"

/**
 * Interface names vrio uses or creates (the daemons' interface, NICs, TAPs, bridges, macvtap
 * lowers): 1-15 letters, digits, '.', '-' or '_', not '.' or '..'. Narrower than the kernel's
 * rule (no '/', ':' or white space), so a name is safe in every tool's command line.
 */
export const IFNAME_RE = /^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,15}$/
export const IFNAME_RULE = "1-15 letters, digits, '.', '-' or '_'"
