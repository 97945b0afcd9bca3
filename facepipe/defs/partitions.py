from dagster import DynamicPartitionsDefinition

from facepipe.domain.request import GROUPS

# One partition per digest group, so the UI shows each group's history and one group can be
# digested again alone. The CLI and sensors add a group's partition before its first digest.
digest_groups = DynamicPartitionsDefinition(name=GROUPS)
