"""What every stage uses: the error types, command-line helpers, atomic writes, the process's
thread and AMX set-up, held log lines and fault injection. Imports nothing of the stages."""
