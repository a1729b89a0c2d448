// Assertions on the synthesized template: the same properties scripts/check-infra asserts on
// what Terraform created in moto.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { App } from 'aws-cdk-lib';
import { PgdaemonClusterStack, backupBucketName, elbName } from '../lib/pgdaemon-stack';
import { TEMPLATE_DIR, renderTemplate } from '../lib/template';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { ACCOUNT, AGENT, CLUSTER, REGION, TAG_KEY, baseProps, roleManagedPolicyArns, rolePolicies, secretArn, synth } from './support';

const t = synth();
const name = `pgdaemon-${CLUSTER}`;

test('state table: cluster/item string keys, on-demand, PITR, encrypted, TTL on expire_at', () => {
  t.hasResourceProperties('AWS::DynamoDB::Table', {
    TableName: name,
    KeySchema: [
      { AttributeName: 'cluster', KeyType: 'HASH' },
      { AttributeName: 'item', KeyType: 'RANGE' },
    ],
    AttributeDefinitions: Match.arrayWith([
      { AttributeName: 'cluster', AttributeType: 'S' },
      { AttributeName: 'item', AttributeType: 'S' },
    ]),
    BillingMode: 'PAY_PER_REQUEST',
    PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
    SSESpecification: { SSEEnabled: true },
    TimeToLiveSpecification: { AttributeName: 'expire_at', Enabled: true },
    DeletionProtectionEnabled: true,
    // The fleet index every table has (fleet.test.ts): a cluster can join a fleet's table later.
    GlobalSecondaryIndexes: [
      {
        IndexName: 'fleet',
        KeySchema: [
          { AttributeName: 'fleet', KeyType: 'HASH' },
          { AttributeName: 'cluster', KeyType: 'RANGE' },
        ],
        Projection: { ProjectionType: 'KEYS_ONLY' },
      },
    ],
  });
});

test('coordinator: provided.al2023, reserved concurrency 1, failover-sized timeout, in the VPC, env contract', () => {
  t.hasResourceProperties('AWS::Lambda::Function', {
    FunctionName: `${name}-coordinator`,
    Runtime: 'provided.al2023',
    Handler: 'bootstrap',
    Architectures: ['x86_64'],
    ReservedConcurrentExecutions: 1,
    Timeout: 300,
    VpcConfig: { SubnetIds: Match.arrayWith(['subnet-0123456789abcdef1']) },
    Environment: {
      Variables: {
        PGDAEMON_TABLE: name,
        PGDAEMON_CLUSTERS: CLUSTER,
        // A per-cluster coordinator: exactly PGDAEMON_CLUSTERS, no registry (fleet.test.ts).
        PGDAEMON_DISCOVERY: 'off',
        PGDAEMON_FENCING: 'ec2,ssm,http',
        PGDAEMON_SNS_TOPIC_ARN: Match.objectLike({ Ref: Match.stringLikeRegexp('^Events') }),
        PGDAEMON_CLUSTER_TAG_KEY: TAG_KEY,
        PGDAEMON_API_TOKEN_PARAMETER: `/aws/reference/secretsmanager/pgdaemon/${CLUSTER}/api-token`,
        PGDAEMON_RUN_BUDGET_MS: '270000',
        RUST_LOG: 'info',
      },
    },
  });
});

test('schedule: rate(1 minute) targeting the coordinator, which allows that rule only', () => {
  t.hasResourceProperties('AWS::Events::Rule', {
    ScheduleExpression: 'rate(1 minute)',
    State: 'ENABLED',
    Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [Match.stringLikeRegexp('^Coordinator'), 'Arn'] } })],
  });
  t.hasResourceProperties('AWS::Lambda::Permission', {
    Action: 'lambda:InvokeFunction',
    Principal: 'events.amazonaws.com',
    SourceArn: { 'Fn::GetAtt': [Match.stringLikeRegexp('^Schedule'), 'Arn'] },
  });
});

test('failover events topic is encrypted', () => {
  t.hasResourceProperties('AWS::SNS::Topic', {
    TopicName: `${name}-events`,
    KmsMasterKeyId: { 'Fn::Join': ['', Match.arrayWith([Match.stringLikeRegexp(':alias/aws/sns$')])] },
  });
});

test('coordinator policy: StopInstances only with the cluster tag condition', () => {
  const stmts = rolePolicies(t, `${name}-coordinator`).flatMap((d) => d.Statement);
  const stop = stmts.filter((s) => [s.Action].flat().includes('ec2:StopInstances'));
  assert.equal(stop.length, 1);
  assert.deepEqual(stop[0].Condition, { StringEquals: { [`aws:ResourceTag/${TAG_KEY}`]: CLUSTER } });
  assert.match(stop[0].Resource, /^arn:aws:ec2:eu-west-1:123456789012:instance\/\*$/);
  const sendOnInstances = stmts.filter((s) => [s.Action].flat().includes('ssm:SendCommand') && /:instance\//.test(s.Resource));
  assert.equal(sendOnInstances.length, 1);
  assert.deepEqual(sendOnInstances[0].Condition, stop[0].Condition);
  for (const s of stmts) {
    assert.ok(![s.Action].flat().some((a: string) => a === '*' || a.endsWith(':*')), `no wildcard actions: ${JSON.stringify(s.Action)}`);
  }
});

test('coordinator policy: reads the agents\' API token (parameter reference and its secret) and no other', () => {
  const stmts = rolePolicies(t, `${name}-coordinator`).flatMap((d) => d.Statement);
  const ssmRead = stmts.filter((s) => [s.Action].flat().some((a: string) => a.startsWith('ssm:Get') && a !== 'ssm:GetCommandInvocation'));
  assert.equal(ssmRead.length, 1);
  assert.deepEqual([ssmRead[0].Action].flat(), ['ssm:GetParameter']);
  assert.equal(ssmRead[0].Resource, `arn:aws:ssm:eu-west-1:123456789012:parameter/aws/reference/secretsmanager/pgdaemon/${CLUSTER}/api-token`);
  const sm = stmts.filter((s) => [s.Action].flat().some((a: string) => a.startsWith('secretsmanager:')));
  assert.deepEqual(sm.map((s) => [[s.Action].flat(), s.Resource]), [[['secretsmanager:GetSecretValue'], secretArn(`pgdaemon/${CLUSTER}/api-token`)]]);
});

test('secrets: four generated at deploy time (Secrets Manager), letters and digits, none in the template', () => {
  const secrets = Object.values(t.findResources('AWS::SecretsManager::Secret')).map((r) => r.Properties);
  assert.deepEqual(secrets.map((p) => p.Name).sort(), ['admin-password', 'api-token', 'replication-password', 'rewind-password'].map((p) => `pgdaemon/${CLUSTER}/${p}`));
  for (const p of secrets) {
    assert.deepEqual(p.GenerateSecretString, { ExcludePunctuation: true, IncludeSpace: false, PasswordLength: 48 });
    assert.equal(p.SecretString, undefined);
  }
  // The nodes boot after them (a first boot reads them).
  const asg = Object.values(t.findResources('AWS::AutoScaling::AutoScalingGroup'))[0];
  const deps: string[] = asg.DependsOn ?? [];
  assert.equal(deps.filter((d) => d.endsWith('Secret') || /Secret[0-9A-F]{8}$/.test(d)).length, 4, JSON.stringify(deps));
  // Your own SecureStrings instead: nothing generated for them.
  const own = synth({ replicationPasswordParameter: '/db/repl', rewindPasswordParameter: '/db/rewind', apiTokenParameter: '/db/api', adminPasswordParameter: '/db/admin' });
  assert.equal(Object.keys(own.findResources('AWS::SecretsManager::Secret')).length, 0);
});

test('agent binary: an asset the node downloads with its role and installs only with the right sha256', () => {
  const lt = Object.values(t.findResources('AWS::EC2::LaunchTemplate'))[0].Properties.LaunchTemplateData;
  const userData: string = lt.UserData['Fn::Base64'];
  const sha = crypto.createHash('sha256').update(fs.readFileSync(AGENT)).digest('hex');
  assert.match(userData, new RegExp(`\\nAGENT_SHA256='${sha}'\\n`));
  const [, bucket, key] = userData.match(/aws s3 cp [^\n]*'s3:\/\/([^/']+)\/([^']+)' \/usr\/local\/bin\/pgdaemon-agent\.new/) ?? [];
  assert.equal(bucket, 'cdk-hnb659fds-assets-123456789012-eu-west-1');
  assert.match(userData, /if \[ "\$GOT_SHA256" != "\$AGENT_SHA256" \]; then\n  rm -f \/usr\/local\/bin\/pgdaemon-agent\.new\n[^\n]*FATAL[^\n]*\n  exit 1\n/);
  const stmts = rolePolicies(t, `${name}-agent`).flatMap((d) => d.Statement);
  const s3 = stmts.filter((s) => [s.Action].flat().some((a: string) => a.startsWith('s3:')));
  assert.deepEqual(s3.map((s) => [[s.Action].flat(), s.Resource]), [[['s3:GetObject'], `arn:aws:s3:::${bucket}/${key}`]]);
  // Without it: no download, the AMI must hold the agent.
  const ami = Object.values(synth({ agentBinaryPath: undefined }).findResources('AWS::EC2::LaunchTemplate'))[0].Properties.LaunchTemplateData;
  assert.doesNotMatch(ami.UserData['Fn::Base64'], /aws s3 cp/);
});

test('agent policy: leading keys on every DynamoDB statement, no DeleteItem, invoke only the agent alias, no managed policy', () => {
  const stmts = rolePolicies(t, `${name}-agent`).flatMap((d) => d.Statement);
  const dyn = stmts.filter((s) => [s.Action].flat().some((a: string) => a.startsWith('dynamodb:')));
  assert.ok(dyn.length >= 1);
  for (const s of dyn) {
    assert.deepEqual(s.Condition, { 'ForAllValues:StringEquals': { 'dynamodb:LeadingKeys': [CLUSTER] } });
    assert.ok(![s.Action].flat().includes('dynamodb:DeleteItem'), 'agents never delete an item');
  }
  const invoke = stmts.filter((s) => [s.Action].flat().includes('lambda:InvokeFunction'));
  assert.equal(invoke.length, 1);
  assert.equal(invoke[0].Resource, `arn:aws:lambda:eu-west-1:123456789012:function:${name}-coordinator:agent-evaluate`);
  t.hasResourceProperties('AWS::Lambda::Alias', { Name: 'agent-evaluate', FunctionVersion: '$LATEST', FunctionName: { Ref: Match.stringLikeRegexp('^Coordinator') } });
  // Every ssm: action is the scoped GetParameter or the SSM agent's registration; nothing on "*" reads data.
  for (const s of stmts.filter((x) => [x.Action].flat().some((a: string) => a.startsWith('ssm:')))) {
    const actions = [s.Action].flat();
    if (actions.includes('ssm:GetParameter')) {
      assert.deepEqual(actions, ['ssm:GetParameter']);
      assert.deepEqual(
        s.Resource,
        ['replication-password', 'rewind-password', 'api-token', 'admin-password'].map(
          (p) => `arn:aws:ssm:eu-west-1:123456789012:parameter/aws/reference/secretsmanager/pgdaemon/${CLUSTER}/${p}`,
        ),
      );
    } else {
      assert.deepEqual(actions, ['ssm:UpdateInstanceInformation']);
    }
  }
  assert.deepEqual(roleManagedPolicyArns(t, `${name}-agent`), [], 'no AWS managed policy (AmazonSSMManagedInstanceCore reads every parameter)');
});

test('nodes: IMDSv2, encrypted volumes, user data installs the agent service and its config', () => {
  const lt = Object.values(t.findResources('AWS::EC2::LaunchTemplate'))[0].Properties.LaunchTemplateData;
  assert.equal(lt.MetadataOptions.HttpTokens, 'required');
  assert.ok(lt.BlockDeviceMappings.every((b: any) => b.Ebs.Encrypted === true)); // eslint-disable-line @typescript-eslint/no-explicit-any
  const userData = Buffer.from(lt.UserData['Fn::Base64'], 'utf8').toString();
  assert.match(userData, /systemctl enable --now pgdaemon-agent\.service/);
  assert.match(userData, new RegExp(`table = "${name}"`));
  assert.match(userData, new RegExp(`cluster = "${CLUSTER}"`));
  assert.match(userData, /amazon-ssm-agent/);
  assert.match(userData, new RegExp(`lambda_function = "${name}-coordinator:agent-evaluate"`));
  // The API needs credentials off loopback: the token from SSM, POSTs from the subnets and members.
  assert.match(userData, /\nlisten = "@PRIVATE_IP@:8008"\n/);
  assert.match(userData, new RegExp(`\\[api\\]\\ntoken_ssm_parameter = "/aws/reference/secretsmanager/pgdaemon/${CLUSTER}/api-token"\\n`));
  // The agents bootstrap the cluster: [bootstrap] on, pg_hba for the subnets (peers) and the clients.
  assert.match(userData, /\n\[bootstrap\]\nenabled = true\n/);
  assert.match(userData, /\npeer_networks = \["10\.0\.1\.0\/24","10\.0\.2\.0\/24","10\.0\.3\.0\/24"\]\n/);
  assert.match(userData, /\nclient_networks = \["10\.0\.0\.0\/8","10\.0\.1\.0\/24","10\.0\.2\.0\/24","10\.0\.3\.0\/24"\]\n/);
  assert.match(userData, /\nrewind_user = "rewinder"\nrewind_ssm_parameter = "\/aws\/reference\/secretsmanager\/pgdaemon\/orders\/rewind-password"\n/);
  assert.match(userData, /systemctl enable --now pgdaemon-admin-role\.service/);
  assert.doesNotMatch(userData.split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n'), /\b(initdb|pg_ctl|postgresql-setup)\b/);
  assert.match(userData, /\nallowlist = \["10\.0\.1\.0\/24","10\.0\.2\.0\/24","10\.0\.3\.0\/24"\]\nallowlist_include_members = true\n/);
  t.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', {
    MinSize: '3',
    MaxSize: '3',
    HealthCheckType: 'EC2',
    TargetGroupARNs: Match.arrayWith([{ Ref: Match.stringLikeRegexp('^Writer') }, { Ref: Match.stringLikeRegexp('^Readers') }]),
    Tags: Match.arrayWith([{ Key: TAG_KEY, Value: CLUSTER, PropagateAtLaunch: true }]),
  });
});

test('internal NLB: writer on /primary, readers on /replica, listeners 5432/5433', () => {
  t.hasResourceProperties('AWS::ElasticLoadBalancingV2::LoadBalancer', { Type: 'network', Scheme: 'internal' });
  for (const [path, tg] of [['/primary', 'Writer'], ['/replica', 'Readers']]) {
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::TargetGroup', {
      Protocol: 'TCP',
      Port: 5432,
      HealthCheckProtocol: 'HTTP',
      HealthCheckPort: '8008',
      HealthCheckPath: path,
      Matcher: { HttpCode: '200' },
    });
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', {
      Port: tg === 'Writer' ? 5432 : 5433,
      Protocol: 'TCP',
      DefaultActions: [{ Type: 'forward', TargetGroupArn: { Ref: Match.stringLikeRegexp(`^${tg}`) } }],
    });
  }
});

test('security groups: Postgres and agent API only from the cluster, the NLB (and the coordinator)', () => {
  const ingress = Object.values(t.findResources('AWS::EC2::SecurityGroupIngress')).map((r) => r.Properties);
  const res = t.toJSON().Resources;
  const sgName = (ref: any) => res[ref['Fn::GetAtt'][0]].Properties.GroupName; // eslint-disable-line @typescript-eslint/no-explicit-any
  const into = (port: number) =>
    ingress
      .filter((r) => sgName(r.GroupId) === `${name}-nodes` && r.FromPort <= port && port <= r.ToPort)
      .map((r) => (r.SourceSecurityGroupId ? sgName(r.SourceSecurityGroupId) : r.CidrIp))
      .sort();
  assert.deepEqual(into(5432), [`${name}-nlb`, `${name}-nodes`]);
  assert.deepEqual(into(8008), [`${name}-coordinator`, `${name}-nlb`, `${name}-nodes`]);
  // No CIDR rule on the nodes at all; clients reach only the NLB's listeners.
  assert.ok(Object.values(t.findResources('AWS::EC2::SecurityGroup')).every((g) => (g.Properties.SecurityGroupIngress ?? []).length === 0 || g.Properties.GroupName === `${name}-nlb`));
});

test('bad input is refused with a clear error and builds nothing', () => {
  const bad: [string, Partial<Parameters<typeof baseProps>[0]>, RegExp][] = [
    ['cluster name', { clusterName: 'Bad_Name' }, /clusterName/],
    ['one subnet', { subnetIds: ['subnet-0123456789abcdef1'], availabilityZones: ['eu-west-1a'] }, /subnetIds/],
    ['fencing', { fencing: ['ec2', 'reboot' as never] }, /fencing/],
    ['node count', { nodeCount: 1 }, /nodeCount/],
    ['timeout', { coordinatorTimeoutSeconds: 30 }, /coordinatorTimeoutSeconds/],
    ['open cidr', { clientCidrBlocks: ['0.0.0.0/0'] }, /clientCidrBlocks/],
    ['reserved tag', { clusterTagKey: 'aws:cluster' }, /clusterTagKey/],
    ['missing zip', { lambdaZipPath: '/nonexistent/bootstrap.zip' }, /lambdaZipPath/],
    ['relative token parameter', { apiTokenParameter: 'pgdaemon/orders/api-token' }, /apiTokenParameter/],
    ['subnet CIDRs count', { subnetCidrBlocks: ['10.0.1.0/24'] }, /subnetCidrBlocks/],
    ['subnet CIDR', { subnetCidrBlocks: ['10.0.1.0/24', '10.0.2.0/24', 'subnet-0123456789abcdef3'] }, /subnetCidrBlocks/],
    ['agent URL (replaced)', { agentBinaryUrl: 'https://example.com/pgdaemon-agent' }, /agentBinaryUrl: replaced by agentBinaryPath/],
    ['missing agent', { agentBinaryPath: '/nonexistent/pgdaemon-agent' }, /agentBinaryPath/],
    ['open client network', { clientNetworks: ['0.0.0.0/0'] }, /clientNetworks/],
  ];
  for (const [what, props, msg] of bad) {
    const app = new App();
    assert.throws(() => new PgdaemonClusterStack(app, 'Bad', baseProps(props)), msg, what);
    assert.equal(app.node.findAll().filter((c) => c.node.id === 'State').length, 0, `${what}: nothing built`);
  }
});

test('load balancer names fit 32 characters and stay distinct (same rule as Terraform)', () => {
  assert.equal(elbName('pgdaemon-orders-readers'), 'pgdaemon-orders-readers');
  const long = 'pgdaemon-abcdefghijklmnopqrstuvwxyz-12345';
  // The value Terraform's expression gives for the same name (md5 of the full name).
  assert.equal(elbName(`${long}-writer`), 'pgdaemon-abcdefghijklmnop-e8e089');
  const names = ['nlb', 'writer', 'readers'].map((k) => elbName(`${long}-${k}`));
  assert.ok(names.every((n) => n.length <= 32));
  assert.equal(new Set(names).size, 3);
});

test('template renderer: interpolation, optional blocks, unknown names refused', () => {
  const tpl = 'a=${a}\n%{ if url != "" ~}\nget ${url}\n%{ endif ~}\nend\n';
  assert.equal(renderTemplate(tpl, { a: 1, url: '' }), 'a=1\nend\n');
  assert.equal(renderTemplate(tpl, { a: 1, url: 'https://x' }), 'a=1\nget https://x\nend\n');
  assert.throws(() => renderTemplate(tpl, { a: 1 }), /"url"/);
});

test('options: customer key everywhere, arm64 coordinator, own fencing order and password parameter', () => {
  const key = 'arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555';
  const o = synth({
    kmsKeyArn: key,
    lambdaArchitecture: 'arm64',
    fencing: ['ssm', 'ec2'],
    replicationPasswordParameter: '/db/orders/repl',
    apiTokenParameter: '/db/orders/api',
  });
  o.hasResourceProperties('AWS::DynamoDB::Table', { SSESpecification: { SSEEnabled: true, SSEType: 'KMS', KMSMasterKeyId: key } });
  o.hasResourceProperties('AWS::SNS::Topic', { KmsMasterKeyId: key });
  o.hasResourceProperties('AWS::Logs::LogGroup', { KmsKeyId: key });
  o.hasResourceProperties('AWS::Lambda::Function', {
    Architectures: ['arm64'],
    Environment: { Variables: Match.objectLike({ PGDAEMON_FENCING: 'ssm,ec2', PGDAEMON_API_TOKEN_PARAMETER: '/db/orders/api' }) },
  });
  const lt = Object.values(o.findResources('AWS::EC2::LaunchTemplate'))[0].Properties.LaunchTemplateData;
  assert.ok(lt.BlockDeviceMappings.every((b: any) => b.Ebs.KmsKeyId === key)); // eslint-disable-line @typescript-eslint/no-explicit-any
  assert.match(lt.UserData['Fn::Base64'], /ssm_parameter = "\/db\/orders\/repl"/);
  const agent = rolePolicies(o, `${name}-agent`).flatMap((d) => d.Statement);
  assert.match(lt.UserData['Fn::Base64'], /token_ssm_parameter = "\/db\/orders\/api"/);
  assert.deepEqual(agent.find((s) => s.Sid === 'ReadClusterSecrets').Resource, [
    'arn:aws:ssm:eu-west-1:123456789012:parameter/db/orders/repl',
    `arn:aws:ssm:eu-west-1:123456789012:parameter/aws/reference/secretsmanager/pgdaemon/${CLUSTER}/rewind-password`,
    'arn:aws:ssm:eu-west-1:123456789012:parameter/db/orders/api',
    `arn:aws:ssm:eu-west-1:123456789012:parameter/aws/reference/secretsmanager/pgdaemon/${CLUSTER}/admin-password`,
  ]);
  // Only the two left to the stack are generated, and read.
  assert.deepEqual(agent.find((s) => s.Sid === 'ReadGeneratedSecrets').Resource, [
    secretArn(`pgdaemon/${CLUSTER}/rewind-password`),
    secretArn(`pgdaemon/${CLUSTER}/admin-password`),
  ]);
  const coord = rolePolicies(o, `${name}-coordinator`).flatMap((d) => d.Statement);
  assert.equal(coord.find((s) => s.Sid === 'ReadAgentApiToken').Resource, 'arn:aws:ssm:eu-west-1:123456789012:parameter/db/orders/api');
  assert.equal(coord.find((s) => s.Sid === 'ReadGeneratedApiToken'), undefined);
  // With a customer key there is nothing to suppress.
  const table = Object.values(o.findResources('AWS::DynamoDB::Table'))[0];
  assert.equal(table.Metadata?.checkov, undefined);
});

test('without subnetCidrBlocks: the agents admit POSTs from the members only, and synth warns', () => {
  const app = new App();
  const stack = new PgdaemonClusterStack(app, 'NoCidrs', baseProps({ subnetCidrBlocks: undefined }));
  const lt = Object.values(Template.fromStack(stack).findResources('AWS::EC2::LaunchTemplate'))[0].Properties.LaunchTemplateData;
  assert.match(lt.UserData['Fn::Base64'], /\nallowlist = \[\]\nallowlist_include_members = true\n/);
  const warnings = Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('subnetCidrBlocks is not set'));
  assert.equal(warnings.length, 1);
});

// The alarms and dashboard of templates/alarms.json and templates/dashboard.json, as
// scripts/check-infra asserts them on what Terraform created in moto.
const ALARMS = JSON.parse(fs.readFileSync(`${TEMPLATE_DIR}/alarms.json`, 'utf8')) as Array<Record<string, string | number>>;

test('alarms: one per shared spec, on the coordinator metrics or its Lambda, no actions by default', () => {
  t.resourceCountIs('AWS::CloudWatch::Alarm', ALARMS.length);
  assert.deepEqual(
    ALARMS.map((a) => a.id).sort(),
    ['coordinator-errors', 'coordinator-silent', 'failover', 'fencing-failed', 'lambda-errors', 'no-primary'],
  );
  for (const a of ALARMS) {
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      AlarmName: `${name}-${a.id}`,
      AlarmDescription: Match.stringLikeRegexp(`^pgdaemon ${CLUSTER}: `),
      Namespace: a.namespace,
      MetricName: a.metric,
      Dimensions: [a.dimension === 'cluster' ? { Name: 'Cluster', Value: CLUSTER } : { Name: 'FunctionName', Value: `${name}-coordinator` }],
      Statistic: a.statistic,
      Period: a.period,
      EvaluationPeriods: a.evaluation_periods,
      DatapointsToAlarm: a.datapoints_to_alarm,
      Threshold: a.threshold,
      ComparisonOperator: a.comparison,
      TreatMissingData: a.treat_missing_data,
      AlarmActions: Match.absent(),
    });
  }
  t.hasResourceProperties('AWS::CloudWatch::Alarm', { Namespace: 'pgdaemon', MetricName: 'NoPrimary', Period: 60, EvaluationPeriods: 2 });
});

test('alarms notify alarmTopicArn when given (alarm and OK); anything else is refused', () => {
  const topic = 'arn:aws:sns:eu-west-1:123456789012:oncall';
  const withTopic = synth({ alarmTopicArn: topic });
  for (const a of ALARMS) {
    withTopic.hasResourceProperties('AWS::CloudWatch::Alarm', { AlarmName: `${name}-${a.id}`, AlarmActions: [topic], OKActions: [topic] });
  }
  assert.throws(() => synth({ alarmTopicArn: 'oncall' }), /alarmTopicArn/);
});

test('dashboard: every alarmed metric, for this cluster and its coordinator only', () => {
  const dashboards = t.findResources('AWS::CloudWatch::Dashboard');
  assert.equal(Object.keys(dashboards).length, 1);
  const d = Object.values(dashboards)[0].Properties;
  assert.equal(d.DashboardName, name);
  assert.equal(typeof d.DashboardBody, 'string', 'a plain JSON string (no tokens: the stack has an env)');
  const body = JSON.parse(d.DashboardBody);
  const series: string[][] = body.widgets.flatMap((w: { properties: { metrics?: string[][] } }) => w.properties.metrics ?? []);
  for (const a of ALARMS) {
    assert.ok(series.some((m) => m[0] === a.namespace && m[1] === a.metric), `dashboard shows ${a.namespace} ${a.metric}`);
  }
  assert.ok(series.every((m) => m[3] === CLUSTER || m[3] === `${name}-coordinator`), 'only this cluster and its coordinator');
  assert.ok(!d.DashboardBody.includes('${'), 'fully rendered');
});

// --- backups: the Terraform module's backups.tf, as assert_terraform_moto.py checks it in moto ---

const userDataOf = (tpl: Template): string => Object.values(tpl.findResources('AWS::EC2::LaunchTemplate'))[0].Properties.LaunchTemplateData.UserData['Fn::Base64'];
const s3Statements = (tpl: Template) =>
  rolePolicies(tpl, `${name}-agent`)
    .flatMap((d) => d.Statement)
    .filter((x) => [x.Action].flat().some((a: string) => a.startsWith('s3:')))
    .map((x) => ({ Sid: x.Sid, Action: [x.Action].flat().sort(), Resource: x.Resource, Condition: x.Condition }));
const backupBucket = `pgdaemon-${CLUSTER}-backups-${ACCOUNT}-${REGION}`;

test('backups off by default: no bucket, no [archive], no barman-cloud, no S3 right but the agent object', () => {
  t.resourceCountIs('AWS::S3::Bucket', 0);
  t.resourceCountIs('AWS::S3::BucketPolicy', 0);
  assert.doesNotMatch(userDataOf(t), /\n\[archive\]\n|barman-cloud-wal-archive|barman\[cloud\]/);
  assert.deepEqual(s3Statements(t).map((x) => x.Sid), ['ReadAgentBinary']);
  assert.deepEqual(Object.keys(t.toJSON().Outputs ?? {}), []);
  // enabled: false is the same.
  assert.doesNotMatch(userDataOf(synth({ backups: { enabled: false, prefix: 'x' } })), /\[archive\]/);
});

test('backup bucket: SSE-S3, versioned, private, owner enforced, TLS only, noncurrent versions expire, current objects never, retained', () => {
  const b = synth({ backups: { enabled: true, noncurrentDays: 45 } });
  b.resourceCountIs('AWS::S3::Bucket', 1);
  b.hasResource('AWS::S3::Bucket', {
    DeletionPolicy: 'Retain',
    UpdateReplacePolicy: 'Retain',
    Properties: {
      BucketName: backupBucket,
      BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
      VersioningConfiguration: { Status: 'Enabled' },
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
      OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] },
      LifecycleConfiguration: {
        Rules: [
          {
            Id: 'noncurrent-versions',
            Status: 'Enabled',
            NoncurrentVersionExpiration: { NoncurrentDays: 45 },
            AbortIncompleteMultipartUpload: { DaysAfterInitiation: 7 },
            ExpiredObjectDeleteMarker: true,
          },
        ],
      },
    },
  });
  // barman's retention deletes backups and WAL: no rule expires or moves a current object.
  const rules = Object.values(b.findResources('AWS::S3::Bucket'))[0].Properties.LifecycleConfiguration.Rules;
  for (const r of rules) {
    for (const k of ['ExpirationInDays', 'ExpirationDate', 'Transitions', 'Transition']) assert.equal(r[k], undefined, k);
  }
  const policies = Object.values(b.findResources('AWS::S3::BucketPolicy')).map((r) => r.Properties.PolicyDocument.Statement);
  assert.equal(policies.length, 1);
  assert.deepEqual(policies[0].map((x: any) => [x.Effect, x.Action, x.Condition]), [['Deny', 's3:*', { Bool: { 'aws:SecureTransport': 'false' } }]]); // eslint-disable-line @typescript-eslint/no-explicit-any
  assert.equal(policies[0][0].Resource.length, 2, 'the bucket and its objects');
});

test('backups: the node role lists, reads, writes and deletes under its cluster\'s prefix only, reads its restore sources', () => {
  const b = synth({ backups: { enabled: true, restoreFromClusters: [{ cluster: 'orders-old' }, { cluster: 'legacy', bucketName: 'old-backups', prefix: 'pg/v1' }] } });
  const arn = `arn:aws:s3:::${backupBucket}`;
  assert.deepEqual(s3Statements(b), [
    { Sid: 'ReadAgentBinary', Action: ['s3:GetObject'], Resource: s3Statements(t)[0].Resource, Condition: undefined },
    { Sid: 'BackupBucketHeadForBarman', Action: ['s3:ListBucket'], Resource: [arn, 'arn:aws:s3:::old-backups'], Condition: { Null: { 's3:prefix': 'true' } } },
    { Sid: 'BackupsListThisCluster', Action: ['s3:ListBucket'], Resource: arn, Condition: { StringLike: { 's3:prefix': `pgdaemon/${CLUSTER}/*` } } },
    { Sid: 'BackupsReadWriteThisCluster', Action: ['s3:DeleteObject', 's3:GetObject', 's3:PutObject'], Resource: `${arn}/pgdaemon/${CLUSTER}/*`, Condition: undefined },
    { Sid: 'RestoreSourceList0', Action: ['s3:ListBucket'], Resource: arn, Condition: { StringLike: { 's3:prefix': 'pgdaemon/orders-old/*' } } },
    { Sid: 'RestoreSourceRead0', Action: ['s3:GetObject'], Resource: `${arn}/pgdaemon/orders-old/*`, Condition: undefined },
    { Sid: 'RestoreSourceList1', Action: ['s3:ListBucket'], Resource: 'arn:aws:s3:::old-backups', Condition: { StringLike: { 's3:prefix': 'pg/v1/legacy/*' } } },
    { Sid: 'RestoreSourceRead1', Action: ['s3:GetObject'], Resource: 'arn:aws:s3:::old-backups/pg/v1/legacy/*', Condition: undefined },
  ]);
  // The nodes boot once the bucket and its TLS-only policy exist.
  const deps: string[] = Object.values(b.findResources('AWS::AutoScaling::AutoScalingGroup'))[0].DependsOn ?? [];
  for (const id of [...Object.keys(b.findResources('AWS::S3::Bucket')), ...Object.keys(b.findResources('AWS::S3::BucketPolicy'))]) {
    assert.ok(deps.includes(id), `the Auto Scaling group depends on ${id}: ${deps}`);
  }
});

test('backups: the user data installs barman-cloud unless present and writes [archive] destination; outputs name the bucket and destination', () => {
  const b = synth({ backups: { enabled: true } });
  const ud = userDataOf(b);
  const destination = `s3://${backupBucket}/pgdaemon`;
  assert.match(ud, new RegExp(`\\n\\[archive\\]\\ndestination = "${destination.replace(/[.]/g, '\\.')}"\\n\\n\\[log\\]\\n`));
  assert.doesNotMatch(ud, /endpoint_url/);
  assert.match(ud, /\nif command -v barman-cloud-wal-archive >\/dev\/null 2>&1; then\n/);
  assert.match(ud, /pip install [^\n]*'barman\[cloud\]==3\.4\.0'\n/);
  // Before the agent starts (it archives from its first WAL on).
  assert.ok(ud.indexOf('barman-cloud-wal-archive') < ud.indexOf('systemctl enable --now pgdaemon-agent.service'));
  const outputs = Object.entries(b.toJSON().Outputs as Record<string, { Value: string }>).map(([k, v]) => [k, v.Value]);
  assert.deepEqual(Object.fromEntries(outputs), { BackupBucketName: backupBucket, ArchiveDestination: destination });
});

test('backups in an existing bucket: nothing created, the rights and the destination on that bucket and prefix', () => {
  const b = synth({ backups: { enabled: true, bucketName: 'corp-pg-backups', prefix: 'eu/pg' } });
  b.resourceCountIs('AWS::S3::Bucket', 0);
  b.resourceCountIs('AWS::S3::BucketPolicy', 0);
  assert.match(userDataOf(b), /\ndestination = "s3:\/\/corp-pg-backups\/eu\/pg"\n/);
  const rw = s3Statements(b).find((x) => x.Sid === 'BackupsReadWriteThisCluster')!;
  assert.equal(rw.Resource, `arn:aws:s3:::corp-pg-backups/eu/pg/${CLUSTER}/*`);
  // Without an env the stack cannot name a bucket of its own, but may use yours.
  const app = new App();
  assert.throws(() => new PgdaemonClusterStack(app, 'NoEnv', baseProps({ env: undefined, agentBinaryPath: undefined, backups: { enabled: true } })), /backups: the stack needs an explicit account and region/);
  new PgdaemonClusterStack(app, 'NoEnvOwnBucket', baseProps({ env: undefined, agentBinaryPath: undefined, backups: { enabled: true, bucketName: 'corp-pg-backups' } }));
});

test('backups: bad input is refused with a clear error', () => {
  const bad: [string, object, RegExp][] = [
    ['bucket name', { enabled: true, bucketName: 'Bad_Bucket' }, /backups\.bucketName/],
    ['leading slash', { enabled: true, prefix: '/pg' }, /backups\.prefix/],
    ['wildcard', { enabled: true, prefix: 'pg*' }, /backups\.prefix/],
    ['trailing slash', { enabled: true, prefix: 'pg/' }, /backups\.prefix/],
    ['no days', { enabled: true, noncurrentDays: 0 }, /backups\.noncurrentDays/],
    ['restore from itself', { enabled: true, restoreFromClusters: [{ cluster: CLUSTER }] }, /restoreFromClusters: this cluster/],
    ['restore cluster name', { enabled: true, restoreFromClusters: [{ cluster: 'Old_One' }] }, /restoreFromClusters cluster/],
  ];
  for (const [what, backups, msg] of bad) {
    assert.throws(() => synth({ backups: backups as never }), msg, what);
  }
  // Its own name in another bucket is another cluster's past: allowed.
  synth({ backups: { enabled: true, restoreFromClusters: [{ cluster: CLUSTER, bucketName: 'old-backups' }] } });
});

test('backup bucket names fit 63 characters and stay distinct', () => {
  assert.equal(backupBucketName('orders', ACCOUNT, REGION), `pgdaemon-orders-backups-${ACCOUNT}-${REGION}`);
  const long = 'abcdefghijklmnopqrstuvwxyz-12345';
  const names = ['ap-southeast-3', 'ap-southeast-4'].map((r) => backupBucketName(long, ACCOUNT, r));
  assert.ok(names.every((n) => n.length <= 63 && /^[a-z0-9][a-z0-9.-]+[a-z0-9]$/.test(n)), JSON.stringify(names));
  assert.notEqual(names[0], names[1]);
});
