"""Read queries behind the API's GET endpoints, one module per concern; import from those."""
