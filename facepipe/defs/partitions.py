from dagster import DynamicPartitionsDefinition

# One partition per digest group, so the UI shows each group's history and one group can be
# digested again alone. The CLI and sensors add a group's partition before its first digest.
GROUPS = "digest_groups"
digest_groups = DynamicPartitionsDefinition(name=GROUPS)
