"""Request and response bodies: `XCreate` comes in, `XPublic` / `XList` go out."""
