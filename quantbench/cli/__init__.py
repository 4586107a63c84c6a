"""The command line (`quantbench …`) and the generated reference pages of the docs site."""
