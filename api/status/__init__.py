"""The HTML status pages' rendering: page helpers and SVG charts."""
