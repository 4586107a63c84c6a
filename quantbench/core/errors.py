"""The one exception users see: a problem with their input, said in one line with its fix."""


class UserError(Exception):
    """Bad input (model, format, device, suite, missing dependency); the CLI prints it and exits 2."""


class MissingDependency(UserError, ImportError):
    """An optional library is absent: a UserError for the CLI, a skipped variant in a worker."""


def require(module: str, extra: str):
    """Returns the imported module, or raises UserError naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{module} is not installed ({e}); install it with "
                        f"`pip install 'quantbench[{extra}]'`") from None
