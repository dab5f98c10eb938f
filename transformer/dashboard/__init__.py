"""`transformer dashboard`: a local web page over runs (docs/dashboard.md).

- `app.py` lays out the page and its callbacks (Dash, the optional `dashboard` extra);
- `figures.py` draws `analysis.dashboard_data`'s numbers as Plotly charts and HTML tables.

Only the command imports this package, inside its handler, so nothing else needs Dash.
"""
