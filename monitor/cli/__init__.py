"""The `sonitor` command: `sonitor` (the entry point and its subcommand discovery), `daemon`
(run, check-config, test-alert), `package` (enroll, score), `ack` (ack, history, revert), `devices`,
`logs` (log format: terminal or journal priorities)."""
