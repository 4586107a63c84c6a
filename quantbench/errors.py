"""The one exception users see: a problem with their input, said in one line with its fix."""


class UserError(Exception):
    """Bad input (model, format, device, suite, missing dependency); the CLI prints it and exits 2."""


def require(module: str, extra: str):
    """Returns the imported module, or raises UserError naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{module} is not installed ({e}); install it with "
                        f"`pip install 'quantbench[{extra}]'`") from None
