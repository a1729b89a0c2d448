# Internal NLB: clients connect to the writer listener (postgres_port), which forwards only to
# the node whose agent answers 200 on /primary (the lease holder); the reader listener
# (reader_port) forwards to the nodes answering 200 on /replica.

resource "aws_security_group" "nlb" {
  name        = "${local.name}-nlb"
  description = "pgdaemon internal NLB: listeners open to the configured clients only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_security_group_rule" "nlb_writer_from_cidrs" {
  count             = length(var.client_cidr_blocks) > 0 ? 1 : 0
  description       = "Clients to the writer listener"
  type              = "ingress"
  security_group_id = aws_security_group.nlb.id
  protocol          = "tcp"
  from_port         = var.postgres_port
  to_port           = var.postgres_port
  cidr_blocks       = var.client_cidr_blocks
}

resource "aws_security_group_rule" "nlb_readers_from_cidrs" {
  count             = length(var.client_cidr_blocks) > 0 ? 1 : 0
  description       = "Clients to the reader listener"
  type              = "ingress"
  security_group_id = aws_security_group.nlb.id
  protocol          = "tcp"
  from_port         = var.reader_port
  to_port           = var.reader_port
  cidr_blocks       = var.client_cidr_blocks
}

resource "aws_security_group_rule" "nlb_writer_from_sgs" {
  for_each                 = toset(var.client_security_group_ids)
  description              = "Clients to the writer listener"
  type                     = "ingress"
  security_group_id        = aws_security_group.nlb.id
  protocol                 = "tcp"
  from_port                = var.postgres_port
  to_port                  = var.postgres_port
  source_security_group_id = each.value
}

resource "aws_security_group_rule" "nlb_readers_from_sgs" {
  for_each                 = toset(var.client_security_group_ids)
  description              = "Clients to the reader listener"
  type                     = "ingress"
  security_group_id        = aws_security_group.nlb.id
  protocol                 = "tcp"
  from_port                = var.reader_port
  to_port                  = var.reader_port
  source_security_group_id = each.value
}

resource "aws_security_group_rule" "nlb_to_postgres" {
  description              = "Forwarded client connections to the nodes"
  type                     = "egress"
  security_group_id        = aws_security_group.nlb.id
  protocol                 = "tcp"
  from_port                = var.postgres_port
  to_port                  = var.postgres_port
  source_security_group_id = aws_security_group.nodes.id
}

resource "aws_security_group_rule" "nlb_to_agent" {
  description              = "Health checks on the agent API"
  type                     = "egress"
  security_group_id        = aws_security_group.nlb.id
  protocol                 = "tcp"
  from_port                = var.agent_api_port
  to_port                  = var.agent_api_port
  source_security_group_id = aws_security_group.nodes.id
}

resource "aws_lb" "this" {
  # checkov:skip=CKV_AWS_91:The listeners are plain TCP; NLB access logs exist only for TLS listeners.
  # checkov:skip=CKV2_AWS_20:TCP pass-through to Postgres, which negotiates TLS itself (sslmode); no HTTP listener to redirect.
  # checkov:skip=CKV2_AWS_28:A WAF cannot be attached to a Network Load Balancer.
  name                             = local.elb_names.nlb
  internal                         = true
  load_balancer_type               = "network"
  subnets                          = var.subnet_ids
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection
  tags                             = local.tags
}

resource "aws_lb_target_group" "writer" {
  name                 = local.elb_names.writer
  port                 = var.postgres_port
  protocol             = "TCP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = 10 # drop connections to a demoted primary quickly

  # 200 only on the member that holds the leader lease (Patroni semantics).
  health_check {
    protocol            = "HTTP"
    port                = tostring(var.agent_api_port)
    path                = "/primary"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
    matcher             = "200"
  }

  # Keep a connection to a node that turned replica from being served: close it.
  connection_termination = true

  tags = local.tags
}

resource "aws_lb_target_group" "readers" {
  name                 = local.elb_names.readers
  port                 = var.postgres_port
  protocol             = "TCP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  # 200 on streaming replicas (add ?lag=<bytes> to exclude lagging ones).
  health_check {
    protocol            = "HTTP"
    port                = tostring(var.agent_api_port)
    path                = "/replica"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
    matcher             = "200"
  }

  connection_termination = true

  tags = local.tags
}

resource "aws_lb_listener" "writer" {
  # checkov:skip=CKV_AWS_2:TCP pass-through; Postgres terminates TLS end to end.
  # checkov:skip=CKV_AWS_103:TCP pass-through; Postgres terminates TLS end to end.
  load_balancer_arn = aws_lb.this.arn
  port              = var.postgres_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.writer.arn
  }

  tags = local.tags
}

resource "aws_lb_listener" "readers" {
  # checkov:skip=CKV_AWS_2:TCP pass-through; Postgres terminates TLS end to end.
  # checkov:skip=CKV_AWS_103:TCP pass-through; Postgres terminates TLS end to end.
  load_balancer_arn = aws_lb.this.arn
  port              = var.reader_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.readers.arn
  }

  tags = local.tags
}
