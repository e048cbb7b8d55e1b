"""Who is signing in: the directory interface (`directory`), its ldap3 adapter (`ldap`,
the only ldap3 importer), an in-memory fake (`fake_directory`) and the login throttle
shared by every broker through the database (`throttle`)."""
