"""One exception type for every user-facing error: the CLI prints its message on one line and
exits with code 2, never a traceback."""


class UserError(Exception):
    """Bad input from the user (file, recipe key, option). The message names the file/field."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class OutOfSpace(UserError):
    """The disk or folder could not take what a command writes (full, over quota, read-only): exit 1;
    every file written before stays whole, and the same command continues once there is room."""

    exit_code = 1


def output_error(e: OSError, resume_hint: str = "run the same command again") -> UserError:
    """An OSError met while writing, as one line naming the file and the fix."""
    import errno

    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    what = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpace(f"{where}{what}; free space, then {resume_hint} (files written before are whole and kept)")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutOfSpace(f"{where}{what}; make the folder writable, then {resume_hint}")
    return OutOfSpace(f"{where}{what}")


def out_of_memory(e: RuntimeError) -> str | None:
    """The one line for a device (or host) allocation that failed mid-run — torch's
    OutOfMemoryError on a GPU, the CPU allocator's "can't allocate memory" — or None."""
    text = " ".join(str(e).split())
    if type(e).__name__ != "OutOfMemoryError" and "can't allocate memory" not in text:
        return None
    what = text.split(". ")[0][:120]
    return (f"out of memory ({what}); every file written so far is complete. Lower train.batch_size (per process) "
            f"or, on a GPU, set train.amp = \"bf16\", with a new --out (--resume keeps a run's batch size); or free "
            f"the device and run the same command again with --resume")


class ProtocolError(RuntimeError):
    """Code asked for data the protocol forbids it (a loss policy measuring the evaluation split):
    a bug in that code, not bad input (README, "One protocol for every method")."""
