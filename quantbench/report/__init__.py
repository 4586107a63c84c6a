"""Reading records back as tables, plots and the self-contained HTML report."""
