#!/usr/bin/env bash
# Sourced by the other scripts: one spelling for tools that differ between
# Linux (GNU coreutils) and macOS (BSD tools, bash 3.2).

# The SHA-256 of stdin as 64 hex digits. macOS has `shasum -a 256`, not sha256sum.
qwenvl_sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 | cut -d' ' -f1
  else
    echo "error: neither sha256sum nor shasum is installed" >&2
    return 1
  fi
}

# Is this macOS?
qwenvl_is_macos() {
  [ "$(uname -s 2>/dev/null)" = Darwin ]
}
