//! The grant domain against a real PostgreSQL: researchers, proposals,
//! accounts, concurrent withdrawals and their journal. Services run in this
//! process on loopback sockets, each test with a fresh database; the
//! invariants are checked in the database itself, not taken from replies.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use grantmesh_proto::v1::*;
use grantmesh_proto::{AgencyClient, CollegeClient, RegistryClient};
use grantmesh_server::RunningServer;
use support::db::TestDb;
use support::*;
use tonic::transport::Channel;
use tonic::{Code, Status};
use uuid::Uuid;

const DAY: Duration = Duration::from_secs(86_400);

/// A registry, two colleges and an agency on one fresh database.
struct Mesh {
    db: TestDb,
    /// Kept so the registry lives as long as the mesh.
    _registry: RunningServer,
    colleges: Vec<RunningServer>,
    agency: RunningServer,
}

impl Mesh {
    async fn start(day_length: Duration) -> Mesh {
        let db = TestDb::create().await;
        let registry = start_registry().await;
        let mut colleges = Vec::new();
        for n in 0..2 {
            colleges.push(
                start_college_in(
                    &db.url,
                    &format!("college-{n}"),
                    day_length,
                    Some(&registry.url()),
                )
                .await,
            );
        }
        let agency = start_agency(&db.url, &registry.url(), "nsf", (300_000, 500_000)).await;
        let client = RegistryClient::connect(registry.url()).await.unwrap();
        assert_eventually(Duration::from_secs(5), "both colleges registered", || {
            let mut client = client.clone();
            async move {
                client
                    .list_instances(ListInstancesRequest {
                        service: "college".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .instances
                    .len()
                    == 2
            }
        })
        .await;
        Mesh {
            db,
            _registry: registry,
            colleges,
            agency,
        }
    }

    async fn college(&self, n: usize) -> CollegeClient<Channel> {
        CollegeClient::connect(self.colleges[n].url())
            .await
            .unwrap()
    }

    async fn agency(&self) -> AgencyClient<Channel> {
        AgencyClient::connect(self.agency.url()).await.unwrap()
    }

    /// Registers and logs in a researcher; returns (id, token).
    async fn researcher(&self, name: &str) -> (String, String) {
        let mut college = self.college(0).await;
        let email = format!("{name}-{}@university.edu", Uuid::new_v4().simple());
        let researcher = college
            .register_researcher(RegisterResearcherRequest {
                name: name.into(),
                email: email.clone(),
                password: "correct horse battery".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let login = college
            .login(LoginRequest {
                email,
                password: "correct horse battery".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            login.researcher.unwrap().researcher_id,
            researcher.researcher_id
        );
        (researcher.researcher_id, login.token)
    }

    /// Opens an account directly with the agencies' service credential.
    async fn open(&self, investigator: &str, award: i64, days: u32) -> Account {
        let credential = keys().agency_token("nsf").unwrap();
        self.college(0)
            .await
            .open_account(authed(
                OpenAccountRequest {
                    proposal_id: Uuid::new_v4().to_string(),
                    agency: "nsf".into(),
                    principal_investigator_id: investigator.into(),
                    title: "Test account".into(),
                    award_minor: award,
                    duration_days: days,
                },
                &credential,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Checks the journal invariants in the database and returns (balance, journal sum, entries).
    async fn check_invariants(&self, account: &str) -> (i64, i64, i64) {
        let client = self.db.client().await;
        let id: Uuid = account.parse().unwrap();
        let row = client
            .query_one(
                "SELECT a.award, a.balance, COALESCE(SUM(w.amount), 0)::bigint, COUNT(w.id),
                        COALESCE(MIN(w.balance_after), a.award)
                 FROM accounts a LEFT JOIN withdrawals w ON w.account_id = a.id
                 WHERE a.id = $1 GROUP BY a.id",
                &[&id],
            )
            .await
            .unwrap();
        let (award, balance, sum, count, lowest): (i64, i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        assert_eq!(
            balance,
            award - sum,
            "balance must equal award minus the journal's sum"
        );
        assert!(balance >= 0 && lowest >= 0, "never negative");
        let keys: i64 = client
            .query_one(
                "SELECT COUNT(DISTINCT idempotency_key) FROM withdrawals WHERE account_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(keys, count, "each idempotency key applied once");
        (balance, sum, count)
    }
}

async fn start_registry() -> RunningServer {
    let options = grantmesh_server::ServeOptions::new("grantmesh.v1.Registry");
    let service = grantmesh_registry::RegistryService::new(
        grantmesh_registry::RegistryConfig {
            instance_id: "registry".into(),
            default_ttl: Duration::from_secs(3),
            warmup: Duration::ZERO,
        },
        options.streams_closing.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    grantmesh_server::spawn(
        listener,
        tonic::service::Routes::new(service.into_server()),
        options,
    )
    .unwrap()
}

fn withdraw(account: &str, amount: i64, key: &str, token: &str) -> tonic::Request<WithdrawRequest> {
    authed(
        WithdrawRequest {
            account_id: account.into(),
            amount_minor: amount,
            idempotency_key: key.into(),
            memo: "reagents".into(),
        },
        token,
    )
}

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, mentions: &str) {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "{:?} should mention {mentions:?}",
        status.message()
    );
}

#[tokio::test]
async fn the_whole_flow_runs_from_registration_to_withdrawals_across_two_colleges() {
    let mesh = Mesh::start(DAY).await;
    let (pi, pi_token) = mesh.researcher("ada").await;
    let (student, student_token) = mesh.researcher("grace").await;

    let mut agency = mesh.agency().await;
    let info = agency
        .describe_agency(DescribeAgencyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.min_amount_minor, info.max_amount_minor),
        (300_000, 500_000)
    );
    let proposal = agency
        .submit_proposal(authed(
            SubmitProposalRequest {
                title: "Protein folding at scale".into(),
                description: "Three years of compute.".into(),
                requested_amount_minor: 400_000,
                duration_days: 365,
                idempotency_key: "proposal-1".into(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proposal.decision(), proposal::Decision::Accepted);
    assert_eq!(proposal.principal_investigator_id, pi);
    assert!(
        !proposal.account_id.is_empty(),
        "the reply carries the account id"
    );

    let rejected = agency
        .submit_proposal(authed(
            SubmitProposalRequest {
                title: "Too small".into(),
                description: String::new(),
                requested_amount_minor: 299_999,
                duration_days: 30,
                idempotency_key: "proposal-2".into(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.decision(), proposal::Decision::Rejected);
    assert!(
        rejected.reason.contains("band") && rejected.account_id.is_empty(),
        "{}",
        rejected.reason
    );

    let listed = agency
        .list_proposals(authed(
            ListProposalsRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.proposals.len(), 1);
    assert_eq!(
        listed.proposals[0].proposal_id, rejected.proposal_id,
        "newest first"
    );
    let second = agency
        .list_proposals(authed(
            ListProposalsRequest {
                page_size: 1,
                page_token: listed.next_page_token,
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.proposals[0].proposal_id, proposal.proposal_id);
    assert!(second.next_page_token.is_empty());
    let fetched = agency
        .get_proposal(authed(
            GetProposalRequest {
                proposal_id: proposal.proposal_id.clone(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.account_id, proposal.account_id);

    // The PI adds a student; each withdraws on a different College instance.
    let account_id = proposal.account_id.clone();
    let mut college_a = mesh.college(0).await;
    let mut college_b = mesh.college(1).await;
    college_a
        .get_account(authed(
            GetAccountRequest {
                account_id: account_id.clone(),
            },
            &pi_token,
        ))
        .await
        .unwrap();
    let students = college_a
        .list_accounts(authed(ListAccountsRequest {}, &student_token))
        .await
        .unwrap()
        .into_inner();
    assert!(students.accounts.is_empty());
    let added = college_b
        .add_member(authed(
            AddMemberRequest {
                account_id: account_id.clone(),
                email: student_email_of(&mesh, &student).await,
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.members.len(), 2);
    assert_eq!(added.members[0].role(), member::Role::PrincipalInvestigator);

    let first = college_a
        .withdraw(withdraw(&account_id, 25_000, "w-1", &student_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.balance_minor, 375_000);
    let second = college_b
        .withdraw(withdraw(&account_id, 5_000, "w-2", &pi_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.balance_minor, 370_000);

    for college in [&mut college_a, &mut college_b] {
        let account = college
            .get_account(authed(
                GetAccountRequest {
                    account_id: account_id.clone(),
                },
                &student_token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(account.balance_minor, 370_000);
        assert_eq!(account.award_minor, 400_000);
        assert_eq!(account.state(), account::State::Open);
    }
    let journal = college_b
        .list_transactions(authed(
            ListTransactionsRequest {
                account_id: account_id.clone(),
                page_size: 1,
                page_token: String::new(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(journal.transactions[0].amount_minor, 5_000, "newest first");
    let rest = college_b
        .list_transactions(authed(
            ListTransactionsRequest {
                account_id: account_id.clone(),
                page_size: 10,
                page_token: journal.next_page_token,
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.transactions.len(), 1);
    assert_eq!(rest.transactions[0].researcher_id, student);
    assert_eq!(
        mesh.check_invariants(&account_id).await,
        (370_000, 30_000, 2)
    );

    // Removing the student takes their access away.
    college_a
        .remove_member(authed(
            RemoveMemberRequest {
                account_id: account_id.clone(),
                researcher_id: student.clone(),
            },
            &pi_token,
        ))
        .await
        .unwrap();
    assert_status(
        college_b
            .withdraw(withdraw(&account_id, 1, "w-3", &student_token))
            .await,
        Code::PermissionDenied,
        "not a member",
    );
}

async fn student_email_of(mesh: &Mesh, researcher: &str) -> String {
    let client = mesh.db.client().await;
    let id: Uuid = researcher.parse().unwrap();
    client
        .query_one("SELECT email FROM researchers WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn sixty_four_concurrent_withdrawers_never_overdraw_an_account() {
    let mesh = Mesh::start(DAY).await;
    let (_, token) = mesh.researcher("ada").await;
    let pi = mesh
        .db
        .client()
        .await
        .query_one("SELECT id::text FROM researchers", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let colleges = [mesh.college(0).await, mesh.college(1).await];

    // 64 withdrawers take 3,000 at a time until refused: 33 can succeed.
    let tasks = (0..64).map(|n| {
        let mut college = colleges[n % 2].clone();
        let (account, token) = (account.clone(), token.clone());
        tokio::spawn(async move {
            let mut applied = 0;
            for attempt in 0.. {
                match college
                    .withdraw(withdraw(
                        &account,
                        3_000,
                        &format!("w-{n}-{attempt}"),
                        &token,
                    ))
                    .await
                {
                    Ok(reply) => {
                        assert!(reply.get_ref().balance_minor >= 0);
                        applied += 1;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        assert!(
                            status.message().contains("insufficient funds"),
                            "{status:?}"
                        );
                        return applied;
                    }
                }
            }
            unreachable!()
        })
    });
    let applied: i64 = join_all(tasks).await.into_iter().map(Result::unwrap).sum();
    assert_eq!(applied, 33);
    assert_eq!(mesh.check_invariants(&account).await, (1_000, 99_000, 33));
}

#[tokio::test]
async fn a_thousand_retries_of_one_key_apply_once() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let colleges = [mesh.college(0).await, mesh.college(1).await];
    let limit = Arc::new(tokio::sync::Semaphore::new(50));

    let calls = (0..1_000).map(|n| {
        let mut college = colleges[n % 2].clone();
        let (account, token, limit) = (account.clone(), token.clone(), limit.clone());
        tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            college
                .withdraw(withdraw(&account, 750, "the-one-key", &token))
                .await
                .unwrap()
                .into_inner()
        })
    });
    let replies: Vec<WithdrawReply> = join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let first: Vec<_> = replies.iter().filter(|r| !r.replayed).collect();
    assert_eq!(first.len(), 1, "exactly one call applied the withdrawal");
    let id = &first[0].transaction.as_ref().unwrap().transaction_id;
    assert!(
        replies
            .iter()
            .all(|r| &r.transaction.as_ref().unwrap().transaction_id == id)
    );
    assert_eq!(mesh.check_invariants(&account).await, (99_250, 750, 1));

    let mut college = mesh.college(1).await;
    assert_status(
        college
            .withdraw(withdraw(&account, 751, "the-one-key", &token))
            .await,
        Code::FailedPrecondition,
        "already used",
    );
    assert_eq!(mesh.check_invariants(&account).await, (99_250, 750, 1));
}

#[tokio::test]
async fn a_retried_accept_opens_one_account() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;

    // The College side: the same proposal opened twenty times on two instances.
    let credential = keys().agency_token("nsf").unwrap();
    let proposal_id = Uuid::new_v4().to_string();
    let colleges = [mesh.college(0).await, mesh.college(1).await];
    let opens = (0..20).map(|n| {
        let mut college = colleges[n % 2].clone();
        let request = OpenAccountRequest {
            proposal_id: proposal_id.clone(),
            agency: "nsf".into(),
            principal_investigator_id: pi.clone(),
            title: "Retried".into(),
            award_minor: 400_000,
            duration_days: 30,
        };
        let credential = credential.clone();
        tokio::spawn(async move {
            college
                .open_account(authed(request, &credential))
                .await
                .unwrap()
                .into_inner()
                .account_id
        })
    });
    let ids: Vec<String> = join_all(opens)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(ids.iter().all(|id| id == &ids[0]));

    // The Agency side: one submission retried ten times at once.
    let mut agency = mesh.agency().await;
    let submits = (0..10).map(|_| {
        let mut agency = agency.clone();
        let token = token.clone();
        tokio::spawn(async move {
            agency
                .submit_proposal(authed(
                    SubmitProposalRequest {
                        title: "Retried proposal".into(),
                        description: String::new(),
                        requested_amount_minor: 350_000,
                        duration_days: 90,
                        idempotency_key: "same-key".into(),
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner()
        })
    });
    let proposals: Vec<Proposal> = join_all(submits)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        proposals
            .iter()
            .all(|p| p.proposal_id == proposals[0].proposal_id
                && p.account_id == proposals[0].account_id)
    );
    let again = agency
        .get_proposal(authed(
            GetProposalRequest {
                proposal_id: proposals[0].proposal_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.account_id, proposals[0].account_id);

    let db = mesh.db.client().await;
    let counts: (i64, i64) = {
        let row = db
            .query_one(
                "SELECT (SELECT COUNT(*) FROM accounts), (SELECT COUNT(*) FROM proposals)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        counts,
        (2, 1),
        "one account per proposal, one proposal per key"
    );
}

#[tokio::test]
async fn withdrawals_are_refused_once_the_account_has_expired() {
    // A "day" lasts one second here.
    let mesh = Mesh::start(Duration::from_secs(1)).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 2).await;
    let mut college = mesh.college(1).await;
    let mut events = college
        .watch_account(authed(
            WatchAccountRequest {
                account_id: account.account_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        events.message().await.unwrap().unwrap().kind(),
        account_event::Kind::Snapshot
    );

    college
        .withdraw(withdraw(&account.account_id, 1_000, "before", &token))
        .await
        .unwrap();
    assert_eq!(
        events.message().await.unwrap().unwrap().kind(),
        account_event::Kind::Withdrawal
    );

    let expired = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an expiry event within the account's two 1-second days")
        .unwrap()
        .unwrap();
    assert_eq!(expired.kind(), account_event::Kind::Expired);
    assert_eq!(expired.account.unwrap().state(), account::State::Expired);

    assert_status(
        college
            .withdraw(withdraw(&account.account_id, 1_000, "after", &token))
            .await,
        Code::FailedPrecondition,
        "expired",
    );
    // The first withdrawal's key still answers with its original result.
    let replay = college
        .withdraw(withdraw(&account.account_id, 1_000, "before", &token))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(
        mesh.check_invariants(&account.account_id).await,
        (99_000, 1_000, 1)
    );
}

#[tokio::test]
async fn watchers_see_changes_made_on_another_college_instance() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let mut events = mesh
        .college(0)
        .await
        .watch_account(authed(
            WatchAccountRequest {
                account_id: account.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let snapshot = events.message().await.unwrap().unwrap();
    assert_eq!(snapshot.account.unwrap().balance_minor, 100_000);

    let mut other = mesh.college(1).await;
    other
        .withdraw(withdraw(&account, 4_000, "k1", &token))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kind(), account_event::Kind::Withdrawal);
    assert_eq!(event.account.unwrap().balance_minor, 96_000);
    assert_eq!(event.transaction.unwrap().amount_minor, 4_000);

    let (_, _) = mesh.researcher("grace").await;
    let email: String = mesh
        .db
        .client()
        .await
        .query_one("SELECT email FROM researchers WHERE name = 'grace'", &[])
        .await
        .unwrap()
        .get(0);
    other
        .add_member(authed(
            AddMemberRequest {
                account_id: account.clone(),
                email,
            },
            &token,
        ))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kind(), account_event::Kind::Membership);
    assert_eq!(event.account.unwrap().members.len(), 2);
}

#[tokio::test]
async fn authentication_and_permissions_are_enforced() {
    let mesh = Mesh::start(DAY).await;
    let (pi, pi_token) = mesh.researcher("ada").await;
    let (_, outsider_token) = mesh.researcher("mallory").await;
    let (member, member_token) = mesh.researcher("grace").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let mut college = mesh.college(0).await;
    let member_email = student_email_of(&mesh, &member).await;
    college
        .add_member(authed(
            AddMemberRequest {
                account_id: account.clone(),
                email: member_email,
            },
            &pi_token,
        ))
        .await
        .unwrap();

    // No token, a forged token.
    let bare = tonic::Request::new(GetAccountRequest {
        account_id: account.clone(),
    });
    assert_status(
        college.get_account(bare).await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        college
            .get_account(authed(
                GetAccountRequest {
                    account_id: account.clone(),
                },
                "not-a-token",
            ))
            .await,
        Code::Unauthenticated,
        "invalid",
    );
    let forged = grantmesh_auth::Keys::new(&[7; 32], &[8; 32], Duration::from_secs(60))
        .unwrap()
        .researcher_token(pi.parse().unwrap())
        .unwrap()
        .0;
    assert_status(
        college.withdraw(withdraw(&account, 1, "k", &forged)).await,
        Code::Unauthenticated,
        "invalid",
    );
    let mut agency = mesh.agency().await;
    let proposal = SubmitProposalRequest {
        title: "t".into(),
        description: String::new(),
        requested_amount_minor: 400_000,
        duration_days: 1,
        idempotency_key: "k".into(),
    };
    assert_status(
        agency.submit_proposal(tonic::Request::new(proposal)).await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        college
            .login(LoginRequest {
                email: "nobody@university.edu".into(),
                password: "whatever1".into(),
            })
            .await,
        Code::Unauthenticated,
        "wrong",
    );

    // Someone else's account.
    assert_status(
        college
            .get_account(authed(
                GetAccountRequest {
                    account_id: account.clone(),
                },
                &outsider_token,
            ))
            .await,
        Code::PermissionDenied,
        "not a member",
    );
    assert_status(
        college
            .withdraw(withdraw(&account, 1, "k", &outsider_token))
            .await,
        Code::PermissionDenied,
        "not a member",
    );
    assert_status(
        college
            .list_transactions(authed(
                ListTransactionsRequest {
                    account_id: account.clone(),
                    ..Default::default()
                },
                &outsider_token,
            ))
            .await,
        Code::PermissionDenied,
        "not a member",
    );
    // Members may not manage membership; only the PI may.
    assert_status(
        college
            .add_member(authed(
                AddMemberRequest {
                    account_id: account.clone(),
                    email: "x@university.edu".into(),
                },
                &member_token,
            ))
            .await,
        Code::PermissionDenied,
        "principal investigator",
    );
    assert_status(
        college
            .remove_member(authed(
                RemoveMemberRequest {
                    account_id: account.clone(),
                    researcher_id: pi.clone(),
                },
                &pi_token,
            ))
            .await,
        Code::FailedPrecondition,
        "cannot be removed",
    );
    // Only an agency opens accounts.
    let open = OpenAccountRequest {
        proposal_id: "p".into(),
        agency: "nsf".into(),
        principal_investigator_id: pi.clone(),
        title: "t".into(),
        award_minor: 1,
        duration_days: 1,
    };
    assert_status(
        college.open_account(authed(open.clone(), &pi_token)).await,
        Code::PermissionDenied,
        "agency",
    );
    assert_status(
        college.open_account(tonic::Request::new(open)).await,
        Code::Unauthenticated,
        "authorization",
    );
    // And another researcher's proposal is not yours.
    let mine = agency
        .submit_proposal(authed(
            SubmitProposalRequest {
                title: "Mine".into(),
                description: String::new(),
                requested_amount_minor: 400_000,
                duration_days: 1,
                idempotency_key: "k".into(),
            },
            &pi_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        agency
            .get_proposal(authed(
                GetProposalRequest {
                    proposal_id: mine.proposal_id,
                },
                &outsider_token,
            ))
            .await,
        Code::PermissionDenied,
        "not yours",
    );
    assert_eq!(mesh.check_invariants(&account).await, (100_000, 0, 0));
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    let mut college = mesh.college(0).await;

    for amount in [0, -5, i64::MAX] {
        assert_status(
            college
                .withdraw(withdraw(&account, amount, "k", &token))
                .await,
            Code::InvalidArgument,
            "amount_minor",
        );
    }
    assert_status(
        college.withdraw(withdraw(&account, 10, "", &token)).await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    assert_status(
        college
            .withdraw(withdraw(&account, 10, &"k".repeat(129), &token))
            .await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    let mut long_memo = withdraw(&account, 10, "k", &token);
    long_memo.get_mut().memo = "m".repeat(201);
    assert_status(
        college.withdraw(long_memo).await,
        Code::InvalidArgument,
        "memo",
    );
    assert_status(
        college
            .withdraw(withdraw("not-an-id", 10, "k", &token))
            .await,
        Code::InvalidArgument,
        "account_id",
    );
    assert_status(
        college
            .withdraw(withdraw(&Uuid::new_v4().to_string(), 10, "k", &token))
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_status(
        college
            .withdraw(withdraw(&account, 100_001, "k", &token))
            .await,
        Code::FailedPrecondition,
        "insufficient funds",
    );
    assert_status(
        college
            .get_account(authed(
                GetAccountRequest {
                    account_id: Uuid::new_v4().to_string(),
                },
                &token,
            ))
            .await,
        Code::NotFound,
        "does not exist",
    );

    let register = |name: &str, email: &str, password: &str| RegisterResearcherRequest {
        name: name.into(),
        email: email.into(),
        password: password.into(),
    };
    assert_status(
        college
            .register_researcher(register("Ada", "not-an-email", "long enough"))
            .await,
        Code::InvalidArgument,
        "email",
    );
    assert_status(
        college
            .register_researcher(register("", "a@b.edu", "long enough"))
            .await,
        Code::InvalidArgument,
        "name",
    );
    assert_status(
        college
            .register_researcher(register(&"n".repeat(201), "a@b.edu", "long enough"))
            .await,
        Code::InvalidArgument,
        "name",
    );
    assert_status(
        college
            .register_researcher(register("Ada", "a@b.edu", "short"))
            .await,
        Code::InvalidArgument,
        "password",
    );
    college
        .register_researcher(register("Ada", "Twice@B.edu", "long enough"))
        .await
        .unwrap();
    assert_status(
        college
            .register_researcher(register("Ada", "twice@b.edu", "long enough"))
            .await,
        Code::AlreadyExists,
        "twice@b.edu",
    );

    let mut agency = mesh.agency().await;
    let proposal = |title: &str, amount: i64, days: u32, key: &str| SubmitProposalRequest {
        title: title.into(),
        description: String::new(),
        requested_amount_minor: amount,
        duration_days: days,
        idempotency_key: key.into(),
    };
    assert_status(
        agency
            .submit_proposal(authed(proposal("", 400_000, 30, "k"), &token))
            .await,
        Code::InvalidArgument,
        "title",
    );
    assert_status(
        agency
            .submit_proposal(authed(proposal("t", 0, 30, "k"), &token))
            .await,
        Code::InvalidArgument,
        "requested_amount_minor",
    );
    assert_status(
        agency
            .submit_proposal(authed(proposal("t", 400_000, 0, "k"), &token))
            .await,
        Code::InvalidArgument,
        "duration_days",
    );
    assert_status(
        agency
            .submit_proposal(authed(proposal("t", 400_000, 30, ""), &token))
            .await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    assert_status(
        agency
            .get_proposal(authed(
                GetProposalRequest {
                    proposal_id: "nope".into(),
                },
                &token,
            ))
            .await,
        Code::InvalidArgument,
        "proposal_id",
    );
    assert_status(
        agency
            .get_proposal(authed(
                GetProposalRequest {
                    proposal_id: Uuid::new_v4().to_string(),
                },
                &token,
            ))
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_status(
        agency
            .list_proposals(authed(
                ListProposalsRequest {
                    page_size: 10,
                    page_token: "garbage".into(),
                },
                &token,
            ))
            .await,
        Code::InvalidArgument,
        "page_token",
    );

    // Nothing above changed anything.
    assert_eq!(mesh.check_invariants(&account).await, (100_000, 0, 0));
    let db = mesh.db.client().await;
    let proposals: i64 = db
        .query_one("SELECT COUNT(*) FROM proposals", &[])
        .await
        .unwrap()
        .get(0);
    let researchers: i64 = db
        .query_one("SELECT COUNT(*) FROM researchers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((proposals, researchers), (0, 2));
}

#[tokio::test]
async fn the_journal_cannot_be_rewritten() {
    let mesh = Mesh::start(DAY).await;
    let (pi, token) = mesh.researcher("ada").await;
    let account = mesh.open(&pi, 100_000, 30).await.account_id;
    mesh.college(0)
        .await
        .withdraw(withdraw(&account, 10, "k", &token))
        .await
        .unwrap();
    let db = mesh.db.client().await;
    for statement in [
        "UPDATE withdrawals SET amount = 1",
        "DELETE FROM withdrawals",
        "TRUNCATE withdrawals CASCADE",
    ] {
        let err = db.batch_execute(statement).await.expect_err(statement);
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{err:?}"
        );
    }
    let overdraw = db
        .batch_execute("UPDATE accounts SET balance = -1")
        .await
        .expect_err("CHECK (balance >= 0)");
    assert!(format!("{overdraw:?}").contains("check"), "{overdraw:?}");
}

#[tokio::test]
async fn several_named_agencies_each_decide_by_their_own_band() {
    let mesh = Mesh::start(DAY).await;
    let (_, token) = mesh.researcher("ada").await;
    let erc = start_agency(
        &mesh.db.url,
        &mesh._registry.url(),
        "erc",
        (100_000, 200_000),
    )
    .await;

    // Clients choose an agency by its label among all registered agencies.
    let options = grantmesh_discovery::BalancerOptions {
        labels: vec![("agency".into(), "erc".into())],
        ..Default::default()
    };
    let agencies =
        grantmesh_discovery::Balancer::new(vec![mesh._registry.url()], "agency", options);
    assert_eventually(
        Duration::from_secs(5),
        "the erc agency is seen, and only it",
        || async {
            agencies
                .view()
                .instances
                .iter()
                .map(|i| i.id.clone())
                .collect::<Vec<_>>()
                == ["agency-erc"]
        },
    )
    .await;
    let submit = |key: &str| {
        authed(
            SubmitProposalRequest {
                title: "Small grant".into(),
                description: String::new(),
                requested_amount_minor: 150_000,
                duration_days: 30,
                idempotency_key: key.into(),
            },
            &token,
        )
    };
    let at_erc = agencies
        .call(|channel| {
            let request = submit("k1");
            async move { AgencyClient::new(channel).submit_proposal(request).await }
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (at_erc.agency.as_str(), at_erc.decision()),
        ("erc", proposal::Decision::Accepted)
    );
    let at_nsf = mesh
        .agency()
        .await
        .submit_proposal(submit("k1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (at_nsf.agency.as_str(), at_nsf.decision()),
        ("nsf", proposal::Decision::Rejected)
    );
    assert!(
        at_nsf.reason.contains("300000 to 500000"),
        "{}",
        at_nsf.reason
    );

    // Each agency sees only its own proposals.
    let mut nsf = mesh.agency().await;
    assert_status(
        nsf.get_proposal(authed(
            GetProposalRequest {
                proposal_id: at_erc.proposal_id.clone(),
            },
            &token,
        ))
        .await,
        Code::NotFound,
        "nsf",
    );
    let listed = nsf
        .list_proposals(authed(ListProposalsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.proposals.len(), 1);
    erc.stop().await.unwrap();
}
