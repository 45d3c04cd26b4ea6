"""Who belongs and which keys vouch for them: manifest, certificates, authority, identity."""
